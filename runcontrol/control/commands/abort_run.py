"""READY, RUN or PAUSED -> STOP whatever the participants answer, for when things went wrong.

  {"to": "run", "cmd": "abort_run", "id": 1, "timeout": 10}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "STOP", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {"lta2": "silent (no answer in time)"}}}
  Participants are told `end` with `abort: true`; what went wrong with each is in `problems` and the run log
  (`result` "aborted"). `timeout` as for prepare_run.
  `by` (who asks, default the sender) and `sequence` (the sequence step ending it) go into the record's
  `ended_by`.

Errors: `busy` (another transition is under way), `bad_state` (the state is STOP), `bad_field` (`timeout`).
"""

from runcontrol.control.commands.base import BY, SEQUENCE, TIMEOUT

NAME = "abort_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {"timeout": TIMEOUT, "by": BY, "sequence": SEQUENCE}}


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
