"""What the notifier sent, to whom, and what failed; the deliveries still waiting; the maintenance windows.

  {"to": "run", "cmd": "notifications", "id": 1, "n": 20}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {
       "sent": [{"ts": 1763737200.4, "id": 7, "route": "shift", "kind": "raised", "alarm": "ccd_warm",
                 "title": "[damicm] ALARM ccd_warm", "ok": true, "attempt": 1}, ...],
       "pending": [{"id": 8, "route": "experts", "kind": "escalated", "alarm": "ccd_warm", "attempts": 3,
                    "next_at": 1763737260.0, "error": "..."}], "failing": 0, "maintenance": []}}
  `n`: the last tries (default 50). `kind`: raised, escalated, repeat, cleared, test.

Errors: `bad_field` (`n` is not a whole number >= 0), `refused` (the experiment has no notify section),
`no_such_client` (the notifier is not registered).
"""

from runcontrol.control.commands.base import forward

NAME = "notifications"
ACTS = False
WAIT_S = 5.0
SCHEMA = {"type": "object", "properties": {
    "n": {"type": "integer", "minimum": 0, "maximum": 1000, "description": "how many of the last tries"}}}


def handle(ctl, msg):
    return forward(ctl, msg, "notifications", n=msg.get("n", 50))
