"""Leave a participant out of the runs prepared from now on (its program keeps running, or is stopped).

  {"to": "run", "cmd": "exclude", "id": 1, "program": "lta2", "why": "board 2 keeps timing out", "stop": false}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"excluded": {"lta2": {"why": "board 2 keeps timing out",
      "by": "alice", "at": 1764950000.0, "stopped": false}}}}
  `program`: a participant's client name (a program's, or a client that said it takes part). An excluded
  participant is not asked in transitions, is not missed during a run (`run.<client>.absent`), and the run's
  record names it with why; it stays excluded, across restarts, until `include`. With `stop`: its program is
  stopped as well (and started again by `include`). Only in STOP.

Errors: `bad_state` (the state is not STOP), `no_such_client` (not a participant), `bad_field` (`program`,
`why`, `stop`).
"""

from runcontrol.control.commands.base import BY, PROGRAM, WHY

NAME = "exclude"
ACTS = True
WAIT_S = 30.0
SCHEMA = {"type": "object", "required": ["program"],
          "properties": {"program": {**PROGRAM, "description": "the participant's client name"}, "why": WHY,
                         "by": BY, "stop": {"type": "boolean", "description": "stop its program as well"}}}


def handle(ctl, msg):
    return ctl.exclude(msg)
