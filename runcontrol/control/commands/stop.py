"""Stop a program, or every program when none is named; answers once each has stopped.

  {"to": "run", "cmd": "stop", "id": 1, "program": "lta1"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"lta1": {"state": "STOPPED", "pid": null, ...}}}
  Without `program` (or null): every program of the experiment. A stopped program is not restarted until `start`
  or `restart`.

Errors: `bad_field` (`program` is not a name), `unknown_program` (the experiment has no such program).
"""

from runcontrol.control.commands.base import PROGRAM

NAME = "stop"
ACTS = True
WAIT_S = 60.0
SCHEMA = {"type": "object", "properties": {"program": {**PROGRAM, "type": ["string", "null"]}}}


def handle(ctl, msg):
    return ctl.programs.stop(msg, msg.get("program"))
