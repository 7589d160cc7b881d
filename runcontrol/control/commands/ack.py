"""Acknowledge a standing alarm (or every one: `all`), as `by` (default: the sender).

  {"to": "run", "cmd": "ack", "id": 1, "alarm": "ccd_warm", "by": "anna"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"acked": [
       {"alarm": "ccd_warm", "severity": "alarm", "state": "active", ..., "acked": {"by": "anna", "at": 1763737300.2}}]}}
  {"to": "run", "cmd": "ack", "id": 2, "all": true}   acknowledges every standing unacknowledged alarm
  An alarm acknowledged before is answered as it is; one that has cleared and is acknowledged is no longer listed.

Errors: `bad_field` (neither `alarm` nor `all: true`; `by` not 1 to 64 characters), `no_such_alarm` (no alarm of
that name stands; the text lists those that do).
"""

from runcontrol import protocol
from runcontrol.control.commands.base import BY

NAME = "ack"
ACTS = True
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {
    "alarm": {"type": "string", "minLength": 1, "description": "the name of a standing alarm (or all: true)"},
    "all": {"type": "boolean", "description": "true: every standing alarm"},
    "by": BY},
    "if": {"not": {"properties": {"all": {"const": True}}, "required": ["all"]}}, "then": {"required": ["alarm"]}}


def handle(ctl, msg):
    return ctl.alarms.ack(None if msg.get("all") else msg["alarm"], protocol.parse_by(msg))
