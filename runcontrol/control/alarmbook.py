"""The alarms standing now and the alarm log, kept on disk so that they outlive any restart.

Owns, under the experiment's `paths.state`: `alarms.json` (each alarm raised and
not yet both cleared and acknowledged) and `alarms.jsonl` (one line per change:
raised, cleared, acked, and what an action did). An alarm is `active` while its
condition holds and `cleared` after; it stays listed until an operator has
acknowledged it and it has cleared. Every change is fsynced before the caller
goes on. Must not send messages: the run controller does.
"""

import json
from pathlib import Path

from runcontrol.control.durable import append_line, read_lines, write_durably

ACTIVE, CLEARED = "active", "cleared"
SEVERITY_ORDER = {"alarm": 0, "warning": 1}


class AlarmBook:
    def __init__(self, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.state_path = folder / "alarms.json"
        self.log_path = folder / "alarms.jsonl"
        self.alarms = self._read()

    def _read(self):
        try:
            saved = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}   # a damaged file: the conditions still hold, and are raised again
        if not isinstance(saved, dict):
            return {}
        return {name: record for name, record in saved.items()
                if isinstance(record, dict) and record.get("state") in (ACTIVE, CLEARED)}

    def active(self):
        """The names of the alarms whose condition held when last looked at."""
        return {name for name, record in self.alarms.items() if record["state"] == ACTIVE}

    def raise_(self, check, now):
        record = {"alarm": check.alarm, "severity": check.severity, "message": check.message,
                  "value": check.value, "state": ACTIVE, "raised": round(now, 3), "cleared": None, "acked": None}
        self.alarms[check.alarm] = record
        self._change("raised", record, now)
        return record

    def clear(self, name, now):
        """The condition of `name` no longer holds: gone if it was acknowledged, else listed as cleared."""
        record = self.alarms[name]
        record.update(state=CLEARED, cleared=round(now, 3))
        if record["acked"]:
            del self.alarms[name]
        self._change("cleared", record, now)
        return record

    def ack(self, name, by, now):
        """`by` acknowledged `name`; LookupError when no alarm of that name stands."""
        record = self.alarms.get(name)
        if record is None:
            known = ", ".join(sorted(self.alarms)) or "none"
            raise LookupError(f"no alarm {name!r} stands (standing: {known})")
        if record["acked"]:
            return record
        record["acked"] = {"by": by, "at": round(now, 3)}
        if record["state"] == CLEARED:
            del self.alarms[name]
        self._change("acked", record, now)
        return record

    def note(self, name, what, now, **detail):
        """A line in the log that is no change of state: what an action did."""
        self._append({"ts": round(now, 3), "change": what, "alarm": name, **detail})

    def listing(self):
        """The standing alarms, those to look at first first: unacknowledged, active, severe, recent."""
        return sorted(self.alarms.values(), key=lambda r: (r["acked"] is not None, r["state"] != ACTIVE,
                                                           SEVERITY_ORDER.get(r["severity"], 9), -r["raised"]))

    def tail(self, n):
        """The last `n` lines of the alarm log, newest last."""
        return read_lines(self.log_path)[-n:] if n else []

    def _change(self, what, record, now):
        self._append({"ts": round(now, 3), "change": what, **record})
        write_durably(self.state_path, json.dumps(self.alarms))

    def _append(self, entry):
        append_line(self.log_path, entry)
