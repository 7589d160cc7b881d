"""Start a program, or every program when none is named; answers once each is up.

  {"to": "run", "cmd": "start", "id": 1, "program": "lta1"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"lta1": {"state": "RUNNING", "pid": 4242, ...}}}
  Without `program` (or null): every program of the experiment (`{}` when it has none). A program already up is
  answered as it is.

Errors: `bad_field` (`program` is not a name), `unknown_program` (the experiment has no such program), `failed` (it
did not come up: how it ended).
"""

from runcontrol.control.commands.base import PROGRAM

NAME = "start"
ACTS = True
WAIT_S = 60.0
SCHEMA = {"type": "object", "properties": {"program": {**PROGRAM, "type": ["string", "null"]}}}


def handle(ctl, msg):
    return ctl.programs.start(msg, msg.get("program"))
