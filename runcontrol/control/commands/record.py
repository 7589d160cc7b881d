"""A run's record in the run catalog: everything kept of the run, as it ended.

  {"to": "run", "cmd": "record", "id": 1, "number": 12}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"run": 12, "start": 1764930000.1, "end": 1764930600.5,
      "duration": 600.4, "result": "ended", "why": null, "comment": "dark current", "params": {"seconds": 600},
      "began_by": {"client": "web", "operator": "alice", "sequence": null},
      "ended_by": {"client": "sequencer", "operator": "sequencer", "alarm": null, "sequence": {...}, "signal": null},
      "participants": ["lta1", "lta2"], "problems": {}, "settings": {"bias": {"volts": 60, ...}, ...},
      "settings_changed": {"bias": {"volts": [70, 60]}},
      "values": {"temperature": {"id": "cryo.values.temperature", "units": "K", "begin": 140.1, "end": 140.0,
                                 "min": 139.8, "mean": 140.0, "max": 140.3, "count": 600}},
      "alarms": [...], "actions": [...], "files": [{"program": "lta1", "path": "...", "size": 123456,
      "sha256": "...", "images": 10}], "readers": {"lta1": {"lost_packets": 0, ...}},
      "flag": {"value": "good", "by": "alice", "at": 1764931000.0, "why": "checked the images"},
      "flag_history": [...], "pending": [], "recorded": 1764930601.2}}
  Each field: docs/protocol.md, "The run catalog". `pending` lists what is not complete yet ("values": the
  history has not answered for the run's span).

Errors: `bad_field` (`number` is not a run number), `no_such_run` (no run of that number is in the
catalog), `failed` (the catalog cannot be opened: the answer says why).
"""

from runcontrol.control.commands.base import RUN_NUMBER

NAME = "record"
ACTS = False
WAIT_S = 5.0
SCHEMA = {"type": "object", "required": ["number"], "properties": {"number": RUN_NUMBER}}


def handle(ctl, msg):
    return ctl.catalog.record(msg["number"])
