"""Send a test message to every URL of a notify route, through the notifier; the answer says what each did.

  {"to": "run", "cmd": "notify_test", "id": 1, "route": "shift"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"route": "shift", "sent": [{"url": 0, "ok": true},
      {"url": 1, "ok": false, "error": "A Connection error occurred sending JSON notification to 127.0.0.1."}]}}
  The answer comes once each URL was tried once; a failed one is tried again, as any delivery.

Errors: `bad_field` (no `route`, or no route of that name), `refused` (the experiment has no notify section),
`no_such_client` (the notifier is not registered).
"""

from runcontrol.control.commands.base import BY, forward

NAME = "notify_test"
ACTS = True
WAIT_S = 30.0
SCHEMA = {"type": "object", "required": ["route"], "properties": {
    "route": {"type": "string", "minLength": 1, "description": "a route of the experiment's notify section"},
    "by": BY}}


def handle(ctl, msg):
    return forward(ctl, msg, "test", route=msg["route"])
