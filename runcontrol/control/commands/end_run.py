"""RUN -> STOP: every participant ends the run.

  {"to": "run", "cmd": "end_run", "id": 1, "timeout": 10}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "STOP", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {}}}
  `timeout` as for prepare_run. The run log gets the run's record: `result` "ended", its duration.

Errors: `busy` (another transition is under way), `bad_state` (the state is not RUN), `bad_field` (`timeout`),
`failed` (a participant refused, stayed silent or is not registered: each is named; the state stays RUN).
"""

from runcontrol.control.commands.base import TRANSITION

NAME = "end_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = TRANSITION


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
