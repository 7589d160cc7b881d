"""Every program's settings, kept on disk: the current ones, their change log, and a snapshot per run.

Owns, under the experiment's `paths.state`: `config.json` (per program: the
settings it last accepted, the schema it announced, when they last changed),
`config_log.jsonl` (one line per change or refusal: who, when, what) and
`run-configs/<run>.json` (every program's settings as a run began). Every
write is fsynced before the caller goes on. Must not send messages.
"""

import json
from pathlib import Path

from runcontrol.control.durable import append_line, read_lines, sync_folder, write_durably
from runcontrol.errors import ConfigError


class ConfigBook:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "config.json"
        self.log_path = self.folder / "config_log.jsonl"
        self.runs_folder = self.folder / "run-configs"
        self.programs = self._read()

    def _read(self):
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: unreadable ({exc}); move it away to start from the experiment's "
                              "settings") from None
        programs = saved.get("programs") if isinstance(saved, dict) else None
        return {n: p for n, p in programs.items() if isinstance(p, dict)} if isinstance(programs, dict) else {}

    def schema(self, program):
        return self.programs.get(program, {}).get("schema")

    def values(self, program):
        return self.programs.get(program, {}).get("values")

    def changed(self, program):
        return self.programs.get(program, {}).get("changed")

    def learn_schema(self, program, schema):
        entry = self.programs.setdefault(program, {})
        if entry.get("schema") != schema:
            entry["schema"] = schema
            self._save()

    def accept(self, program, values, entry):
        """`program` took `values`: they are its settings now; `entry` (who, what changed) goes to the log."""
        record = self.programs.setdefault(program, {})
        record["values"] = values
        if entry.get("changes"):
            record["changed"] = entry["ts"]
        self._save()
        self.note(entry)

    def note(self, entry):
        append_line(self.log_path, entry)

    def log(self, n, program=None):
        """The last `n` lines of the change log (of one program), newest last."""
        entries = [e for e in read_lines(self.log_path) if isinstance(e, dict) and program in (None, e.get("program"))]
        return entries[-n:]

    def snapshot(self, run):
        """Write every program's settings as run `run` begins; the file's name, relative to the state folder."""
        self.runs_folder.mkdir(exist_ok=True)
        settings = {name: entry["values"] for name, entry in sorted(self.programs.items()) if "values" in entry}
        write_durably(self.runs_folder / f"{run}.json", json.dumps({"run": run, "programs": settings}, indent=1))
        sync_folder(self.folder)
        return f"run-configs/{run}.json"

    def run_settings(self, run):
        """Every program's settings as run `run` began: FileNotFoundError when none were saved for it; OSError,
        ValueError or KeyError when its file cannot be read."""
        return json.loads((self.runs_folder / f"{run}.json").read_text(encoding="utf-8"))["programs"]

    def _save(self):
        write_durably(self.path, json.dumps({"programs": self.programs}, indent=1))
