"""Take an excluded participant part in runs again, from the next prepare_run.

  {"to": "run", "cmd": "include", "id": 1, "program": "lta2"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"included": "lta2", "excluded": {}}}
  A program stopped by `exclude` with `stop` is started again. Only in STOP.

Errors: `bad_state` (the state is not STOP), `no_such_client` (not excluded), `bad_field` (`program`).
"""

from runcontrol.control.commands.base import BY, PROGRAM

NAME = "include"
ACTS = True
WAIT_S = 30.0
SCHEMA = {"type": "object", "required": ["program"],
          "properties": {"program": {**PROGRAM, "description": "the participant's client name"}, "by": BY}}


def handle(ctl, msg):
    return ctl.include(msg)
