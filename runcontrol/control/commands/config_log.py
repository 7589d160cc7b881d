"""The settings' change log, newest last: `n` lines (default 50), of one program when given.

  {"to": "run", "cmd": "config_log", "id": 1, "n": 1, "program": "bias"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": [
       {"ts": 1763737260.1, "program": "bias", "by": "anna", "changes": {"volts": [40, 60]}, "accepted": true,
        "run": null}]}
  Refused changes are logged too (`accepted` false, with `why`); `run` is the run number when it changed during one.

Errors: `bad_field` (`n` not a whole number from 1 to 1000; `program` not a name), `unknown_program` (the experiment
has no such program).
"""

from runcontrol.control.commands.base import PROGRAM
from runcontrol.control.configs import LOG_MAX

NAME = "config_log"
ACTS = False
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {
    "n": {"type": "integer", "minimum": 1, "maximum": LOG_MAX, "description": "how many lines (default 50)"},
    "program": PROGRAM}}


def handle(ctl, msg):
    return ctl.configs.changes(msg.get("n", 50), msg.get("program"))
