"""PAUSED -> RUN: every participant takes data again in the same run.

  {"to": "run", "cmd": "resume_run", "id": 1, "timeout": 10}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "RUN", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {}}}
  Participants are told `resume`, lower `order` first; the run log closes the pause with its duration.
  `timeout` as for prepare_run.

Errors: `busy` (another transition is under way), `bad_state` (the state is not PAUSED), `bad_field` (`timeout`),
`failed` (a participant refused or stayed silent: each is named; those that had resumed are paused again, and the
state stays PAUSED).
"""

from runcontrol.control.commands.base import BY, TIMEOUT

NAME = "resume_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {"timeout": TIMEOUT, "by": BY}}


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
