"""RUN or PAUSED -> STOP: every participant ends the run.

  {"to": "run", "cmd": "end_run", "id": 1, "timeout": 10}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "STOP", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {}}}
  `timeout` as for prepare_run. The run log gets the run's record: `result` "ended", its duration.
  `by` (who asks, default the sender) and `sequence` (the sequence step ending it) go into the record's
  `ended_by`.

Errors: `busy` (another transition is under way), `bad_state` (the state is not RUN or PAUSED), `bad_field`
(`timeout`), `failed` (a participant refused, stayed silent or is not registered: each is named; those that had
ended are told to begin again (and pause, in a paused run); the state stays).
"""

from runcontrol.control.commands.base import BY, SEQUENCE, TIMEOUT

NAME = "end_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {"timeout": TIMEOUT, "by": BY, "sequence": SEQUENCE}}


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
