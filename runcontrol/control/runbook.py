"""Run numbers, the run state and the run log, kept on disk so that no crash can repeat a number.

Owns, under the experiment's `paths.state`: `run_number` (the last number handed
out), `run_state.json` (STOP, READY, RUN or PAUSED, the current run, and the
participants left out of the next runs) and `runs.jsonl` (one JSON record per
change of a run; the last record of a run is its outcome).
Every write is flushed and fsynced before the caller goes on. Must not send
messages: the run controller does.
"""

import json
import time
from pathlib import Path

from runcontrol.control.durable import append_line, read_lines, write_durably
from runcontrol.errors import RunControlError

STOP, READY, RUN, PAUSED = "STOP", "READY", "RUN", "PAUSED"
STATES = (STOP, READY, RUN, PAUSED)
IN_RUN = (RUN, PAUSED)   # a run is under way: settings frozen, participants missed
ALLOWED_FROM = {"prepare_run": (STOP,), "begin_run": (READY,), "pause_run": (RUN,), "resume_run": (PAUSED,),
                "end_run": (RUN, PAUSED), "abort_run": (READY, RUN, PAUSED)}
TARGET = {"prepare_run": READY, "begin_run": RUN, "pause_run": PAUSED, "resume_run": RUN, "end_run": STOP,
          "abort_run": STOP}
WIRE = {"prepare_run": "prepare", "begin_run": "begin", "pause_run": "pause", "resume_run": "resume",
        "end_run": "end", "abort_run": "end"}
UP = ("prepare_run", "begin_run", "resume_run")   # lower `order` first; the others higher first
HINTS = {STOP: "prepare_run first", READY: "begin_run or abort_run", RUN: "pause_run, end_run or abort_run",
         PAUSED: "resume_run, end_run or abort_run"}


class RunBookError(RunControlError):
    """The run files cannot be read or written: no number is handed out."""


class RunBook:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.number_path = self.folder / "run_number"
        self.state_path = self.folder / "run_state.json"
        self.log_path = self.folder / "runs.jsonl"
        saved = self._read_state()
        self.state = saved.get("state", STOP)
        self.current = saved.get("current") or {}
        self.excluded = saved.get("excluded") or {}   # client -> {"why", "by", "at", "stopped"}
        self._latest = None   # run -> its latest record, once the log was read
        if self.state != STOP and self.run is not None:
            # Killed between logging a run's outcome and entering STOP: the log says it ended, so it has.
            latest = next((r for r in reversed(self.records()) if r.get("run") == self.run), None)
            if latest is not None and latest.get("result") not in (None, "running"):
                self.enter(STOP)

    @property
    def run(self):
        return self.current.get("run")

    def _read_state(self):
        try:
            saved = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RunBookError(f"{self.state_path}: unreadable ({exc}); move it away to start from STOP") from None
        if not isinstance(saved, dict) or saved.get("state") not in STATES:
            raise RunBookError(f"{self.state_path}: not a run state; move it away to start from STOP")
        return saved

    def next_number(self):
        """The next run number, on disk before this returns; never one handed out before."""
        last = max(self._last_number(), max((r.get("run", 0) for r in self.records()), default=0))
        number = last + 1
        write_durably(self.number_path, f"{number}\n")
        return number

    def _last_number(self):
        try:
            text = self.number_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise RunBookError(f"{self.number_path} holds {text[:40]!r}, not a run number: "
                               "fix it by hand (it must be the last run number handed out)")
        return int(text)

    def enter(self, state, **current):
        """Make `state` (with the current run's fields) the state on disk."""
        self.state = state
        self.current = current if state != STOP else {}
        self._save()

    def exclude(self, name, **why):
        """Leave `name` out of the runs prepared from now on (durably), with why and by whom."""
        self.excluded[name] = why
        self._save()

    def include(self, name):
        """Take `name` part again; what excluding it said (None if it was not excluded)."""
        said = self.excluded.pop(name, None)
        self._save()
        return said

    def _save(self):
        write_durably(self.state_path, json.dumps({"state": self.state, "current": self.current,
                                                   **({"excluded": self.excluded} if self.excluded else {})}))

    def log(self, record):
        """Append one record to the run log, durably."""
        line = {**record, "logged": round(time.time(), 3)}
        append_line(self.log_path, line)
        if self._latest is not None:
            self._take(json.loads(json.dumps(line)))   # as it reads back from the file

    def records(self):
        """The latest record of each run, in run order (the log is read once; what this book logs is added)."""
        if self._latest is None:
            self._latest = {}
            for record in read_lines(self.log_path):
                self._take(record)
        return [self._latest[n] for n in sorted(self._latest)]

    def _take(self, record):
        if isinstance(record, dict) and isinstance(record.get("run"), int):
            self._latest[record["run"]] = record
