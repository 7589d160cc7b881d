"""The run controller's commands, one module each, and their dispatch: the one table that `send.py --help`, the
operator API (`Operator`) and the web API are built on, or checked against by the tests.

Each module has `NAME` (the wire name); a docstring whose first line says what the command does and whose body
shows its request, its answer and, last, every error code it refuses with; `SCHEMA`, the JSON Schema of its payload
(the fields beside the envelope's); `ACTS`, whether it changes the system (True) or only reads (False); `WAIT_S`,
how long its answer may take by default; and `handle(ctl, msg)`, called with the run controller once the payload
has passed the schema, which calls into the part of the run controller that owns the work and returns the result (or
a Deferred answered later), or raises Refused. A payload that breaks the schema is refused `bad_field`, naming each
field and what is wrong, before the command runs. Modules hold no state of their own.
"""

from runcontrol.control.commands import (abort_run, ack, alarms, begin_run, config, config_diff, config_log,
                                         end_run, exclude, find, flag, include, maintenance, notifications,
                                         notify_test, pause_run, prepare_run, record, reload, restart, resume_run,
                                         run_config, runs, set_config, start, status, stop)
from runcontrol.control.commands.base import VALIDATOR, check

MODULES = (status, start, stop, restart, reload, prepare_run, begin_run, pause_run, resume_run, end_run, abort_run,
           exclude, include, runs, alarms, ack,
           config, set_config, config_log, run_config, config_diff, notify_test, notifications, maintenance,
           record, find, flag)
COMMANDS = {module.NAME: module for module in MODULES}
VALIDATORS = {module.NAME: VALIDATOR(module.SCHEMA) for module in MODULES}
MARGIN_S = 5.0   # beyond a command's own wait: the trip through the server and a busy loop


def summary(module):
    """The first line of the command's docstring: what it does."""
    return module.__doc__.strip().split("\n")[0]


def dispatch(ctl, module):
    """The handler of `module`'s command on the run controller `ctl`: the schema's check, then the command."""
    validator = VALIDATORS[module.NAME]

    def handler(msg):
        check(module.NAME, validator, msg)
        return module.handle(ctl, msg)
    return handler


def register(ctl, client):
    """Serve every command of the table on `client`, the run controller's connection."""
    for module in MODULES:
        client.add_handler(module.NAME, dispatch(ctl, module), summary(module))


def wait_s(name, payload):
    """How long a requester of command `name` with `payload` waits for its answer: its own `timeout` when the
    command takes one (the transitions), else the command's WAIT_S; and a margin."""
    module = COMMANDS[name]
    own = payload.get("timeout") if "timeout" in module.SCHEMA.get("properties", {}) else None
    wanted = own if isinstance(own, (int, float)) and not isinstance(own, bool) else module.WAIT_S
    return wanted + MARGIN_S


def help_text():
    """One line per command, for `send.py --help`."""
    return "\n".join(f"{module.NAME:<12} {summary(module)}" for module in MODULES)
