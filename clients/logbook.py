"""The logbook: operators' notes and an entry for every run, never rewritten, searched in full text.

  python -m clients.logbook --name logbook [--state var/run/logbook]

Notes are Markdown, on no, one or several runs, with attachments (stored once
by their sha256); each run gets an entry of its own, its record of the run
catalog made readable (clients/elog/render.py), asked of the run controller
(`record`) when the run ends, for the latest 200 runs when the logbook
registers, and every 30 s for the latest 20 and those whose record was not
complete: a record completed or flagged later makes a new version. An edit is a
new version, the older ones kept. Everything is in the book
(clients/elog/book.py) before it is answered: killed at any moment, the
logbook loses nothing it acknowledged. Commands (to `logbook`): `note`,
`edit`, `entry`, `entries`, `search`, `attachment`. Each note, edit and run's
entry made or changed is announced as a `logbook_entry` event.
"""

import argparse
import base64
import binascii
import collections
import functools
import logging
import os
import re
import signal
import sys
from pathlib import Path

import experiments
from clients.elog import book as B
from clients.elog.render import render
from runcontrol import logsetup, protocol
from runcontrol.client import Client, Refused, required
from runcontrol.errors import ConfigError

log = logging.getLogger("clients.logbook")

CONTROLLER = "run"
TEXT_MAX = 64 * 1024                 # bytes of a note's text (UTF-8)
ATTACHMENT_MAX = 512 * 1024          # bytes of one attachment
ATTACHMENTS_MAX = 640 * 1024         # bytes of a note's attachments together: with its text, base64 and the
ATTACHMENTS_COUNT = 8                # envelope, a note fits the server's default message limit (1 MiB)
NAME_MAX = 255
RUNS_MAX = 100                       # runs a note is on
LIMIT_MAX = 100                      # entries in one answer of `entries` or `search`
LIST_TEXT_MAX = 2000                 # characters of each entry's text in those answers (`entry` gives it whole)
VERSIONS_BUDGET = 600_000            # characters of older versions' texts `entry` gives in full
CATCH_UP_RUNS = 200                  # the latest runs whose records are looked at when the logbook registers
LOOK_RUNS = 20                       # ... and every LOOK_EVERY_S (a flag set), with the incomplete ones
LOOK_EVERY_S = 30.0
ASKING_MAX = 4                       # records asked of the run controller at once
SHA256 = re.compile(r"[0-9a-f]{64}")

ACTIONS = {
    "note": "write a note (text: Markdown; run or runs; attachments: [{name, base64}]; by)",
    "edit": "a new version of a note (entry, text, attachments, by); the older ones are kept",
    "entry": "one entry as it stands, with its older versions (entry; version: one of them)",
    "entries": "the entries newest first, notes and runs' entries together (limit, offset, run)",
    "search": "full-text search over notes and runs' entries, newest first (text: words, \"a phrase\", pre*, "
              "OR, NOT; limit, offset)",
    "attachment": "an attachment's bytes (sha256): {name, size, type, base64}",
}


class Logbook(Client):
    def __init__(self, name, book, **kwargs):
        super().__init__(name, actions=ACTIONS, meta={"role": "logbook"}, **kwargs)
        self.book = book
        self.waiting = collections.deque()   # runs whose record is to be asked
        self.asking = {}                      # run -> its request of `record`
        self.caught_up = False                # the latest CATCH_UP_RUNS were asked since registering
        self.trouble = None                   # the last problem with the run controller's answers, said once
        self.subscribe("event.run_", self._on_run_event)
        self.timers.every(LOOK_EVERY_S, self._look)

    # --- runs' entries --------------------------------------------------------------------------------

    def _on_registered(self, welcome, was_registered):
        super()._on_registered(welcome, was_registered)
        self.caught_up = False
        self._look()

    def _look(self):
        """Ask the records of the latest runs of the run log (CATCH_UP_RUNS of them until that succeeded once
        since registering, else LOOK_RUNS) and of those whose entry waits for a record to be completed: an entry
        made or changed (a flag set, values come) for each that differs."""
        if not self.registered:
            return
        catching_up = not self.caught_up

        def took(answer):
            if not answer.ok or not isinstance(answer.result, list):
                self._trouble(f"no run log from {CONTROLLER}: {answer.error}", f"{answer.code} {answer.error}")
                return
            self.caught_up = self.caught_up or catching_up
            self._ask(*(r["run"] for r in answer.result if isinstance(r, dict) and isinstance(r.get("run"), int)
                        and r.get("result") != "running"))
        self.start({"to": CONTROLLER, "cmd": "runs", "n": CATCH_UP_RUNS if catching_up else LOOK_RUNS},
                   on_answer=took)
        self._ask(*self.book.pending_runs())

    def _on_run_event(self, topic, event):
        """A run ended (`run_state` STOP), or anything else said of a run (its record may have changed)."""
        run = event.get("run") if isinstance(event, dict) else None
        if not isinstance(run, int) or isinstance(run, bool):
            return
        if topic == protocol.event_topic("run_state") and event.get("state") != "STOP":
            return
        self._ask(run)

    def _ask(self, *runs):
        for run in runs:
            if run not in self.asking and run not in self.waiting:
                self.waiting.append(run)
        while self.waiting and len(self.asking) < ASKING_MAX and self.registered:
            run = self.waiting.popleft()
            self.asking[run] = self.start({"to": CONTROLLER, "cmd": "record", "number": run},
                                          on_answer=functools.partial(self._took_record, run))

    def _took_record(self, run, answer):
        self.asking.pop(run, None)
        if answer.ok and isinstance(answer.result, dict):
            self._write_run(run, answer.result)
        elif answer.code == protocol.BAD_FIELD:   # not in the catalog (a number handed out, never run)
            log.info("run %s has no record in the catalog: %s", run, answer.error)
        else:
            self._trouble(f"no record from {CONTROLLER} (of run {run}, and maybe others): {answer.error}",
                          f"{answer.code} {answer.error}")
            self.caught_up = False   # the next look asks the latest CATCH_UP_RUNS again
        self._ask()

    def _trouble(self, text, key):
        """A warning, unless the last one had the same `key` (the run controller away, or without a catalog: it
        is asked again and again)."""
        if key != self.trouble:
            log.warning("%s; asked again every %g s", text, LOOK_EVERY_S)
        self.trouble = key

    def _write_run(self, run, record):
        pending = record.get("pending") if isinstance(record.get("pending"), list) else []
        when = next((t for t in (record.get("start"), record.get("recorded"))
                     if isinstance(t, (int, float)) and not isinstance(t, bool)), 0.0)
        done, entry_id = self.book.run_entry(run, render(record), when, [str(p) for p in pending])
        if done is not None:
            entry = self.book.entry(entry_id)
            what = "" if done == B.MADE else f", version {entry['version']}"
            self._announce(entry, f"Run {run}'s entry ({record.get('result')}{what})")

    # --- commands --------------------------------------------------------------------------------------

    def cmd_note(self, msg):
        text, by, runs, files = note_text(msg), protocol.parse_by(msg), note_runs(msg), attachments(msg)
        entry = self.book.note(text, by, runs, files, request_key(msg))
        self._announce(entry, f"Note {entry['entry']} by {by}" + (f" on run {', '.join(map(str, runs))}"
                                                                   if runs else ""))
        return entry

    def cmd_edit(self, msg):
        entry_id = whole(msg, "entry", low=1)
        text, by, files = note_text(msg), protocol.parse_by(msg), attachments(msg)
        try:
            entry = self.book.edit(entry_id, text, by, files, request_key(msg))
        except B.Unknown as exc:
            raise Refused(f"'{exc.field}': {exc}", protocol.BAD_FIELD) from None
        except B.NotEditable as exc:
            raise Refused(str(exc), protocol.BAD_STATE) from None
        self._announce(entry, f"Note {entry_id} edited by {by}: version {entry['version']}")
        return entry

    def cmd_entry(self, msg):
        entry_id = whole(msg, "entry", low=1)
        version = whole(msg, "version", low=1, default=None)
        try:
            return self.book.entry(entry_id, versions=True, budget=VERSIONS_BUDGET, version=version)
        except B.Unknown as exc:
            raise Refused(f"'{exc.field}': {exc}", protocol.BAD_FIELD) from None

    def cmd_entries(self, msg):
        limit = whole(msg, "limit", low=1, high=LIMIT_MAX, default=20)
        offset = whole(msg, "offset", low=0, default=0)
        run = whole(msg, "run", low=0, default=None)
        found, total = self.book.entries(limit, offset, run)
        return {"entries": [listed(e) for e in found], "total": total, "offset": offset,
                "more": offset + len(found) < total}

    def cmd_search(self, msg):
        query = required(msg, "text")
        if not isinstance(query, str) or not query.strip():
            raise Refused("'text' must be what to search for: words, \"a phrase\", pre*, OR, NOT", protocol.BAD_FIELD)
        limit = whole(msg, "limit", low=1, high=LIMIT_MAX, default=20)
        offset = whole(msg, "offset", low=0, default=0)
        try:
            found, more = self.book.search(query, limit, offset)
        except B.BadQuery as exc:
            raise Refused(f"'text': {query!r} is not a search the logbook can read ({exc}); write words (each "
                          "must appear), \"a phrase\", a prefix*, OR, NOT, and put text with punctuation in double "
                          "quotes", protocol.BAD_FIELD) from None
        return {"entries": [listed(e) for e in found], "offset": offset, "more": more}

    def cmd_attachment(self, msg):
        digest = required(msg, "sha256")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise Refused("'sha256' must be an attachment's hash: 64 lowercase hexadecimal digits", protocol.BAD_FIELD)
        try:
            name, size, kind, data = self.book.attachment(digest)
        except B.Unknown as exc:
            raise Refused(f"'{exc.field}': {exc}", protocol.BAD_FIELD) from None
        return {"sha256": digest, "name": name, "size": size, "type": kind,
                "base64": base64.b64encode(data).decode("ascii")}

    def _announce(self, entry, message):
        self.send(None, "_event", kind="logbook_entry", entry=entry["entry"], entry_kind=entry["kind"],
                  version=entry["version"], by=entry["by"], runs=entry["runs"], message=message)

    def close(self):
        super().close()
        self.book.close()


# --- the fields of the commands, checked at the edge ------------------------------------------------------

def whole(msg, field, low, high=None, default=...):
    """A whole number field within [low, high]; `default` when absent (required when no default is given)."""
    value = required(msg, field) if default is ... else msg.get(field, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f">= {low}"
        raise Refused(f"'{field}': {value!r} must be a whole number {limits}", protocol.BAD_FIELD)
    return value


def note_text(msg):
    text = required(msg, "text")
    if not isinstance(text, str) or not text.strip():
        raise Refused("'text' must be the note's Markdown text, not empty", protocol.BAD_FIELD)
    size = len(text.encode("utf-8"))
    if size > TEXT_MAX:
        raise Refused(f"'text' is {size:,} bytes: a note holds at most {TEXT_MAX:,} (attach a longer text as a "
                      "file)", protocol.BAD_FIELD)
    return text


def note_runs(msg):
    """The runs a note is on: `run` (a run number) or `runs` (a list of them)."""
    if "run" in msg and "runs" in msg:
        raise Refused("give 'run' (one run number) or 'runs' (a list), not both", protocol.BAD_FIELD)
    if "runs" in msg:
        runs = msg["runs"]
        if not isinstance(runs, list) or len(runs) > RUNS_MAX:
            raise Refused(f"'runs' must be a list of at most {RUNS_MAX} run numbers", protocol.BAD_FIELD)
        for i, run in enumerate(runs):
            if isinstance(run, bool) or not isinstance(run, int) or run < 0:
                raise Refused(f"'runs[{i}]': {run!r} is not a run number (a whole number >= 0)", protocol.BAD_FIELD)
        return runs
    run = msg.get("run")
    if run is None:
        return []
    if isinstance(run, bool) or not isinstance(run, int) or run < 0:
        raise Refused(f"'run': {run!r} is not a run number (a whole number >= 0)", protocol.BAD_FIELD)
    return [run]


def attachments(msg):
    """(name, bytes) of each of the request's `attachments` ([{name, base64}]), every limit checked first."""
    given = msg.get("attachments") or []
    if not isinstance(given, list) or len(given) > ATTACHMENTS_COUNT:
        raise Refused(f"'attachments' must be a list of at most {ATTACHMENTS_COUNT} {{name, base64}} objects",
                      protocol.BAD_FIELD)
    files, total = [], 0
    for i, item in enumerate(given):
        where = f"attachments[{i}]"
        if not isinstance(item, dict):
            raise Refused(f"'{where}' must be an object {{name, base64}}", protocol.BAD_FIELD)
        name, encoded = item.get("name"), item.get("base64")
        if not isinstance(name, str) or not 0 < len(name) <= NAME_MAX or "/" in name or not name.isprintable():
            raise Refused(f"'{where}.name' must be a file name of 1 to {NAME_MAX} printable characters, without '/'",
                          protocol.BAD_FIELD)
        if not isinstance(encoded, str):
            raise Refused(f"'{where}.base64' must be the file's bytes in base64 (text)", protocol.BAD_FIELD)
        if len(encoded) > 4 * (ATTACHMENT_MAX // 3 + 1):
            raise Refused(f"'{where}' ({name}) is over {ATTACHMENT_MAX:,} bytes, the most an attachment may hold",
                          protocol.BAD_FIELD)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refused(f"'{where}.base64' ({name}) is not base64: {exc}", protocol.BAD_FIELD) from None
        if len(data) > ATTACHMENT_MAX:
            raise Refused(f"'{where}' ({name}) is {len(data):,} bytes: an attachment holds at most "
                          f"{ATTACHMENT_MAX:,}", protocol.BAD_FIELD)
        total += len(data)
        if total > ATTACHMENTS_MAX:
            raise Refused(f"'attachments': {total:,} bytes up to {where}: a note's attachments hold at most "
                          f"{ATTACHMENTS_MAX:,} together", protocol.BAD_FIELD)
        files.append((name, data))
    return files


def request_key(msg):
    """Who sent this request and its id: a repeat of it (sent again after a crash) is answered, not made again."""
    return f"{msg['from']} {msg['id']}" if msg.get("from") and msg.get("id") is not None else None


def listed(entry):
    """An entry in a list (`entries`, `search`): its text cut at LIST_TEXT_MAX characters (`cut` says so)."""
    if len(entry["text"]) > LIST_TEXT_MAX:
        return {**entry, "text": entry["text"][:LIST_TEXT_MAX], "cut": True}
    return entry


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.logbook", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=os.environ.get("ORBIT_NAME", "logbook"))
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    parser.add_argument("--server", default=None)
    parser.add_argument("--state", help="where the logbook is kept (default: <paths.state>/logbook)")
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        spec = experiments.load(args.experiment) if args.experiment else None
        state = Path(args.state) if args.state else (spec.paths.state if spec else Path("var/run")) / "logbook"
        logbook = Logbook(args.name, B.Book(state), experiment=args.experiment, server=args.server)
    except (ConfigError, B.BookError) as exc:
        print(f"logbook: {exc}", file=sys.stderr)
        return 2
    try:
        logbook.run_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        logbook.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
