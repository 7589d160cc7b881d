"""The standing alarms, unacknowledged first; with `log`, that many lines of the alarm log too.

  {"to": "run", "cmd": "alarms", "id": 1, "log": 1}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {
       "alarms": [{"alarm": "ccd_warm", "severity": "alarm", "message": "CCD temperature more than 5 K above its
                   set point", "value": 146.1, "state": "active", "raised": 1763737260.5, "cleared": null,
                   "acked": null}],
       "log": [{"ts": 1763737260.5, "change": "raised", "alarm": "ccd_warm", ...}]}}
  `log`: lines of the alarm log, newest last (0 to 1000; default 0: no `log` in the answer).

Errors: `bad_field` (`log` is not a whole number from 0 to 1000).
"""

from runcontrol.control.alarms import LOG_LINES_MAX

NAME = "alarms"
ACTS = False
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {
    "log": {"type": "integer", "minimum": 0, "maximum": LOG_LINES_MAX, "description": "lines of the alarm log"}}}


def handle(ctl, msg):
    return ctl.alarms.listing(msg.get("log", 0))
