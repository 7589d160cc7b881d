"""The notifier's book: what each alarm occurrence caused, the deliveries not yet made, maintenance windows.

Under `<paths.state>/notifier/`: `state.json` (rewritten and fsynced before
anything is sent: a message accepted is on disk first, so a notifier killed
meanwhile sends it after its restart, at least once) and `sent.jsonl` (every
delivery tried: to which route, ok or why not). Must not send anything.
"""

import json
import time
from pathlib import Path

from runcontrol.control.durable import append_line, read_lines, write_durably
from runcontrol.errors import RunControlError

LOG_SHOWN = 1000


class BookError(RunControlError):
    """The notifier's state cannot be read: it does not guess what it already sent."""


class NotifyBook:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "state.json"
        self.log_path = self.folder / "sent.jsonl"
        try:
            self.state = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.state = {"occurrences": {}, "deliveries": [], "maintenance": [], "next": 1}
        except (OSError, ValueError) as exc:
            raise BookError(f"{self.path}: unreadable ({exc}); move it away to start afresh") from None

    @property
    def occurrences(self):
        return self.state["occurrences"]

    @property
    def deliveries(self):
        return self.state["deliveries"]

    @property
    def maintenance(self):
        return self.state["maintenance"]

    def save(self):
        write_durably(self.path, json.dumps(self.state))

    def accept(self, items):
        """New deliveries ({route, index, kind, alarm, title, body}), numbered and on disk with the state."""
        now = round(time.time(), 3)
        for item in items:
            item.update(id=self.state["next"], created=now, attempts=0, next_at=now, error=None)
            self.state["next"] += 1
            self.deliveries.append(item)
        self.save()

    def delivered(self, delivery, ok, error, retry_s):
        """One try of `delivery` ended: gone when `ok`, else tried again in `retry_s`."""
        delivery["attempts"] += 1
        now = time.time()
        entry = {"ts": round(now, 3), "id": delivery["id"], "route": delivery["route"], "kind": delivery["kind"],
                 "alarm": delivery["alarm"], "title": delivery["title"], "ok": ok, "attempt": delivery["attempts"]}
        if ok:
            self.deliveries.remove(delivery)
        else:
            delivery.update(error=error, next_at=round(now + retry_s, 3))
            entry["error"] = error
        self.save()
        append_line(self.log_path, entry)

    def log(self, n):
        return read_lines(self.log_path)[-min(n, LOG_SHOWN):]
