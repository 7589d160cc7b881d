"""The sequencer's book: its queue and where it stands, on disk before each action, so no crash loses or repeats one.

Under `<paths.state>/sequencer/`: `queue.json` (the queue: each entry's sequence,
the values it was given, its state, and the position of the one running: step
index, phase and what that phase has done so far (a run's number, a request's id),
and whether the sequencer is paused and why), `steps/<entry>.json` (each entry's
steps as they were unrolled when it was queued, written once) and `log.jsonl`
(every step begun and ended, every pause, resume, skip and abort). Each write is
fsynced before the caller goes on. Must not send messages: the sequencer does.
"""

import json
import secrets
import time
from dataclasses import asdict
from pathlib import Path

from clients.sequences.plan import Step
from runcontrol.control.durable import append_line, read_lines, write_durably
from runcontrol.errors import RunControlError

WAITING, RUNNING, DONE, ABORTED, FAILED = "waiting", "running", "done", "aborted", "failed"
FINISHED = (DONE, ABORTED, FAILED)
LOG_KEPT = 200     # log entries `log()` hands out at most
KEPT_FINISHED = 100   # finished entries kept in the queue (their steps too)


class BookError(RunControlError):
    """The sequencer's files cannot be read: it does not guess where it stands."""


class QueueBook:
    """The queue and where it stands; `state`: `entries`, `next` (the next entry's number), `started`, `paused`
    (null, or why, by whom, since when) and `token` (this book's, in every tag, so that a book started afresh never
    takes another's runs for its own)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        (self.folder / "steps").mkdir(parents=True, exist_ok=True)
        self.state_path = self.folder / "queue.json"
        self.log_path = self.folder / "log.jsonl"
        self.state = self._read()
        self._steps = {}

    def _read(self):
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"entries": [], "next": 1, "started": False, "paused": None, "token": secrets.token_hex(4)}
        except (OSError, ValueError) as exc:
            raise BookError(f"{self.state_path}: unreadable ({exc}); move it away to start with an empty queue") \
                from None
        if not isinstance(state, dict) or not isinstance(state.get("entries"), list):
            raise BookError(f"{self.state_path}: not a sequencer queue; move it away to start with an empty queue")
        return state

    def save(self):
        write_durably(self.state_path, json.dumps(self.state, indent=1))

    def note(self, event, **fields):
        append_line(self.log_path, {"event": event, "at": round(time.time(), 3), **fields})

    def log(self, n=50):
        return read_lines(self.log_path)[-min(n, LOG_KEPT):]

    # --- the queue --------------------------------------------------------------------------------

    def add(self, sequence, given, steps, by, on_alarm=None):
        """Queue `steps` (of `sequence`, made with `given`, with its `on_alarm`); the new entry, on disk."""
        entry_id = f"q{self.state['next']}"
        write_durably(self.folder / "steps" / f"{entry_id}.json", json.dumps([asdict(s) for s in steps]))
        entry = {"id": entry_id, "sequence": sequence, "given": given, "steps": len(steps), "by": by,
                 "queued": round(time.time(), 3), "state": WAITING, "position": None, "on_alarm": on_alarm or {}}
        self.state["entries"].append(entry)
        self.state["next"] += 1
        self.state.setdefault("token", secrets.token_hex(4))
        self.save()
        self.note("queued", entry=entry_id, sequence=sequence, steps=len(steps), by=by)
        return entry

    def steps(self, entry_id):
        if entry_id not in self._steps:
            raw = json.loads((self.folder / "steps" / f"{entry_id}.json").read_text(encoding="utf-8"))
            self._steps[entry_id] = [Step(**s) for s in raw]
        return self._steps[entry_id]

    def entry(self, entry_id):
        return next((e for e in self.state["entries"] if e["id"] == entry_id), None)

    def current(self):
        """The entry being taken (running), else the first waiting one; None when there is none."""
        entries = [e for e in self.state["entries"] if e["state"] not in FINISHED]
        return next((e for e in entries if e["state"] == RUNNING), entries[0] if entries else None)

    def move(self, entry, index, phase="start", **data):
        """`entry` stands at step `index`, in `phase`, having done `data` (on disk before the caller acts)."""
        entry["state"] = RUNNING
        entry["position"] = {"index": index, "phase": phase, "data": data, "since": round(time.time(), 3)}
        self.save()

    def advance(self, entry, phase, **data):
        """The step in progress reached `phase`; `data` adds to what it has done."""
        position = entry["position"]
        position["phase"] = phase
        position["data"].update(data)
        self.save()

    def finish(self, entry, state, why=None):
        entry["state"] = state
        entry["ended"] = round(time.time(), 3)
        if why:
            entry["why"] = why
        finished = [e for e in self.state["entries"] if e["state"] in FINISHED]
        for old in finished[:-KEPT_FINISHED]:
            self.state["entries"].remove(old)
        self.save()
        for old in finished[:-KEPT_FINISHED]:
            (self.folder / "steps" / f"{old['id']}.json").unlink(missing_ok=True)
            self._steps.pop(old["id"], None)
        self.note(f"sequence_{state}", entry=entry["id"], sequence=entry["sequence"], **({"why": why} if why else {}))

    def pause(self, why, by, at_once=False, entry=None, **data):
        """Paused, with why and by whom; `entry`'s step in progress records `data` in the same write."""
        self.state["paused"] = {"why": why, "by": by, "at": round(time.time(), 3), "at_once": at_once}
        if entry is not None:
            entry["position"]["data"].update(data)
        self.save()
        self.note("paused", why=why, by=by)

    def resume(self, by):
        self.state["paused"] = None
        self.state["started"] = True
        self.save()
        self.note("resumed", by=by)

    def stop(self, by):
        """The queue stops taking entries (after an abort): `start` takes the next."""
        self.state["started"] = False
        self.save()
        self.note("stopped", by=by)

    def start(self, by):
        self.state["started"] = True
        self.save()
        self.note("started", by=by)
