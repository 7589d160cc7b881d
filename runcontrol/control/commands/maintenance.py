"""Hold notifications back for a time (all, or of some alarms or programs), with a reason; or end it.

  {"to": "run", "cmd": "maintenance", "id": 1, "minutes": 120, "reason": "cryostat warm-up", "programs": ["cryo"]}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"from": 1763737200.0, "until": 1763744400.0,
      "reason": "cryostat warm-up", "by": "anna", "alarms": [], "programs": ["cryo"]}}
  {"to": "run", "cmd": "maintenance", "id": 2, "end": true}   ends every window now
  A window ends by itself at `until`; alarms that still stand then are told. Each start and end is an event
  (`maintenance`, `maintenance_ended`).

Errors: `bad_field` (`minutes` not more than 0 and at most 10080, no `reason`, `alarms` or `programs` not lists of
names), `refused` (the experiment has no notify section), `no_such_client` (the notifier is not registered).
"""

from runcontrol.control.commands.base import BY, forward

NAME = "maintenance"
ACTS = True
WAIT_S = 5.0
NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
SCHEMA = {"type": "object", "properties": {
    "minutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 10080, "description": "how long"},
    "reason": {"type": "string", "minLength": 1, "description": "why notifications are held back"},
    "alarms": {**NAMES, "description": "only these alarms (a trailing * matches a prefix); default: all"},
    "programs": {**NAMES, "description": "only the alarms of these programs"},
    "end": {"type": "boolean", "description": "true: end every window now"},
    "by": BY},
    "if": {"not": {"properties": {"end": {"const": True}}, "required": ["end"]}},
    "then": {"required": ["minutes", "reason"]}}


def handle(ctl, msg):
    if msg.get("end"):
        return forward(ctl, msg, "maintenance", end=True)
    return forward(ctl, msg, "maintenance", **{k: msg[k] for k in ("minutes", "reason", "alarms", "programs")
                                                if k in msg})
