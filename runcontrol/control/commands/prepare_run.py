"""STOP -> READY: hand out the next run number; every participant prepares.

  {"to": "run", "cmd": "prepare_run", "id": 1, "timeout": 10, "by": "alice"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"state": "READY", "run": 12, "participants": ["lta1", "lta2"],
      "problems": {}}}
  `timeout`: seconds to wait for every participant's answer (default 10; more than 0, at most 600). The number is on
  disk before any participant hears of it, and spent even when the transition fails. `by` (default: the sender) and
  `sequence` (an object: the sequencer's tag of the step) stay with the run, into every record of the run log.

Errors: `busy` (another transition is under way), `bad_state` (the state is not STOP), `bad_field` (`timeout`),
`failed` (a participant refused, stayed silent or is not registered: each is named; the state stays STOP).
"""

from runcontrol.control.commands.base import BY, SEQUENCE, TIMEOUT

NAME = "prepare_run"
ACTS = True
WAIT_S = 10.0
SCHEMA = {"type": "object", "properties": {"timeout": TIMEOUT, "by": BY, "sequence": SEQUENCE}}


def handle(ctl, msg):
    return ctl.runs.transition(msg, NAME)
