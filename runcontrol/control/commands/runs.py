"""The run log: the latest record of each of the last `n` runs, newest last.

  {"to": "run", "cmd": "runs", "id": 1, "n": 2}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": [
       {"run": 11, "comment": "", "params": {}, "participants": ["lta1"], "start": 1763730000.2,
        "end": 1763730600.4, "duration": 600.2, "result": "ended", "config": "run-configs/11.json"},
       {"run": 12, "comment": "dark current", "params": {"seconds": 600}, "participants": ["lta1", "lta2"],
        "start": 1763737200.1, "result": "running", "config": "run-configs/12.json"}]}
  `n`: default 20; 0 answers []. `result`: running, ended, aborted, failed, ended by shutdown, ended by alarm; `by`:
  who prepared or began it; with `why`, `problems`, `reports` (what participants said of the run) and `sequence`
  (the tag of the sequence step it was taken for) when there are any.

Errors: `bad_field` (`n` is not a whole number >= 0).
"""

NAME = "runs"
ACTS = False
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {
    "n": {"type": "integer", "minimum": 0, "description": "how many runs (default 20)"}}}


def handle(ctl, msg):
    return ctl.runs.records(msg.get("n", 20))
