"""Mark a run's data good or bad (or unknown again), with who and why, in the run catalog.

  {"to": "run", "cmd": "flag", "id": 1, "number": 12, "flag": "bad", "why": "bias off", "by": "alice"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"run": 12, "flag": {"value": "bad", "by": "alice", "at":
      1764931000.0, "why": "bias off"}, ...the rest of the record}}
  Every earlier flag is kept (`flag_history`). A flag set by a person is never changed by the experiment's rules
  (`catalog.rules`).

Errors: `bad_field` (`flag` is not good, bad or unknown, `why` over 500 characters), `no_such_run` (`number`
is no run of the catalog), `failed` (the catalog cannot be opened).
"""

from runcontrol.control.commands.base import BY, RUN_NUMBER

NAME = "flag"
ACTS = True
WAIT_S = 5.0
SCHEMA = {"type": "object", "required": ["number", "flag"], "properties": {
    "number": RUN_NUMBER,
    "flag": {"enum": ["good", "bad", "unknown"], "description": "good, bad or unknown"},
    "why": {"type": "string", "maxLength": 500, "description": "why, for whoever reads the catalog"},
    "by": BY}}


def handle(ctl, msg):
    return ctl.catalog.flag(msg["number"], msg["flag"], msg.get("by") or msg.get("from"), msg.get("why") or "")
