"""READY -> RUN, with an optional comment and run parameters for the participants.

  {"to": "run", "cmd": "begin_run", "id": 1, "comment": "dark current", "params": {"seconds": 600}, "timeout": 10}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "RUN", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {}, "comment": "dark current"}}
  `comment` (default "") and `params` (default {}) go to every participant and into the run log; `timeout` as for
  prepare_run. The settings of every program are saved with the run as it begins. `by` and `sequence` as for
  prepare_run (given here, they replace prepare_run's).

Errors: `busy` (another transition is under way), `bad_state` (the state is not READY), `bad_field` (`comment`,
`params` or `timeout`), `failed` (a participant refused, stayed silent or is not registered: each is named; the state
stays READY and those that had begun are told to end, aborted).
"""

from runcontrol.control.commands.base import BY, SEQUENCE, TIMEOUT

NAME = "begin_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {
    "comment": {"type": "string", "description": "what the run is for"},
    "params": {"type": "object", "description": "run parameters for the participants"},
    "timeout": TIMEOUT, "by": BY, "sequence": SEQUENCE}}


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
