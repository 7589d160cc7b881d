"""Runs of the run catalog that meet every condition, newest first: one row of the run's figures each.

  {"to": "run", "cmd": "find", "id": 1, "where": ["bias.volts=60", "temperature.max<140"], "flag": "good"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"runs": [{"run": 12, "start": 1764930000.1, "result":
      "ended", "flag": "good", "comment": "dark current", "bias.volts": 60, "temperature.max": 139.9, ...}],
      "total": 1, "limit": 100, "offset": 0}}
  A condition is KEY OP VALUE, OP one of = != < <= > >= ~ (~: contains; for `comment`, its words); a payload
  key beside `where`, `limit`, `offset` and `by` is one more KEY=VALUE. Keys: run, start, end (epoch seconds
  or an ISO date/time, UTC), duration, result, why, comment, flag, began_by, ended_by, sequence, params.KEY,
  PROGRAM.SETTING (as the run began), VALUE.STAT (a catalog value; STAT begin, end, min, mean, max, count),
  READER.COUNTER (lta1.lost_packets), files, alarms, alarm. `python send.py --csv run find ...` exports the
  rows as CSV; without --csv, as JSON. `limit` default 100, at most 10000; `offset` pages.

Errors: `bad_field` (a condition that is no KEY OP VALUE, an unknown key (the answer lists the known ones), a
value of the wrong kind, `limit` or `offset` out of range), `failed` (the catalog cannot be opened).
"""

from runcontrol.control.commands.base import BY, payload

NAME = "find"
ACTS = False
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {
    "where": {"type": "array", "maxItems": 50, "items": {"type": "string", "minLength": 1, "maxLength": 500},
              "description": "conditions KEY OP VALUE, all of which must hold"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "rows at most (default 100)"},
    "offset": {"type": "integer", "minimum": 0, "description": "rows skipped (for paging)"},
    "by": BY},
    "additionalProperties": {"type": ["string", "number", "boolean"],
                             "description": "KEY=VALUE: one more condition"}}


def handle(ctl, msg):
    equals = {key: value for key, value in payload(msg).items() if key not in ("where", "limit", "offset", "by")}
    return ctl.catalog.find(msg.get("where", []), equals, msg.get("limit", 100), msg.get("offset", 0))
