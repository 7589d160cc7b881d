"""RUN -> PAUSED: every participant is told to pause (`on_pause`); the run stays open.

  {"to": "run", "cmd": "pause_run", "id": 1, "why": "cryocooler service", "timeout": 10}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "PAUSED", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {}}}
  Participants are told `pause`, higher `order` first. The run log gets the pause (when, why, by whom); the run's
  record, each pause with its duration, `paused_s` in all and `live_s` (its duration without the pauses).
  `resume_run`, `end_run` or `abort_run` follow. `timeout` as for prepare_run.

Errors: `busy` (another transition is under way), `bad_state` (the state is not RUN), `bad_field` (`timeout`,
`why`), `failed` (a participant refused or stayed silent: each is named; those that had paused are resumed, and the
state stays RUN).
"""

from runcontrol.control.commands.base import BY, TIMEOUT, WHY

NAME = "pause_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {"timeout": TIMEOUT, "by": BY, "why": WHY}}


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
