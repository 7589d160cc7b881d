"""The logbook's book: entries, every version of each, their links to runs, attachments, and full-text search.

Under `<paths.state>/logbook/`: `logbook.sqlite` (SQLite in WAL mode with
synchronous=FULL: a note's transaction is on disk when `note` or `edit`
returns) and `attachments/<sha256>` (each file once, by its content hash;
written aside, fsynced, renamed and its folder fsynced before the entry that
names it is committed). Nothing is rewritten: an edit is a new version, the
older ones are kept. An entry is a note (written by a person, linked to no,
one or several runs) or a run's entry (its record of the run catalog, made
readable; one per run). The latest text of each entry is in an FTS5 index.
A request's key (its sender and id) is kept with the version it made, so a
request sent again after a crash (same key, same text, within REPEAT_S) makes
nothing twice. Must not send messages: the logbook program does.
"""

import hashlib
import json
import mimetypes
import os
import sqlite3
import time
from pathlib import Path

from runcontrol.control.durable import sync_folder
from runcontrol.errors import RunControlError

NOTE, RUN = "note", "run"
MADE, CHANGED = "made", "changed"
SNIPPET_WORDS = 24
REPEAT_S = 600.0   # a request sent again (same sender, id and text) within this long is answered, not made again

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, run INTEGER UNIQUE,
    time REAL NOT NULL, created REAL NOT NULL, author TEXT NOT NULL, version INTEGER NOT NULL, pending TEXT);
CREATE INDEX IF NOT EXISTS entries_by_time ON entries (time, id);
CREATE TABLE IF NOT EXISTS versions (entry INTEGER NOT NULL, version INTEGER NOT NULL, text TEXT NOT NULL,
    by TEXT NOT NULL, written REAL NOT NULL, attachments TEXT NOT NULL, request TEXT,
    PRIMARY KEY (entry, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_request ON versions (request) WHERE request IS NOT NULL;
CREATE TABLE IF NOT EXISTS links (run INTEGER NOT NULL, entry INTEGER NOT NULL, PRIMARY KEY (run, entry))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_entry ON links (entry);
CREATE TABLE IF NOT EXISTS files (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL,
    type TEXT NOT NULL, stored REAL NOT NULL) WITHOUT ROWID;
"""
SEARCH = "CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(text, tokenize = 'porter unicode61 remove_diacritics 2')"
ENTRY_COLUMNS = ("e.id, e.kind, e.run, e.time, e.created, e.author, e.version, e.pending, "
                 "v.text, v.by, v.written, v.attachments")
LATEST = "entries e JOIN versions v ON v.entry = e.id AND v.version = e.version"
TYPES = mimetypes.MimeTypes()
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
         (b"GIF89a", "image/gif"), (b"%PDF-", "application/pdf"), (b"SIMPLE  =", "application/fits"))


class BookError(RunControlError):
    """The logbook's file cannot be opened: it does not guess, nor start another over it."""


class Unknown(LookupError):
    """No entry, version or attachment of that name; `field` names the field that asked for it."""

    def __init__(self, field, text):
        super().__init__(text)
        self.field = field


class NotEditable(ValueError):
    """A run's entry follows its record in the run catalog: a person writes a note on the run instead."""


class BadQuery(ValueError):
    """FTS5 cannot read the search text (its own words)."""


class Book:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.files = self.folder / "attachments"
        self.files.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "logbook.sqlite"
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self.db.execute(SEARCH)
        except sqlite3.DatabaseError as exc:
            raise BookError(f"{self.path}: {exc}; move it away to start an empty logbook") from None
        # sqlite3 says OperationalError both for a query FTS5 cannot read and for a failing disk: a query is tried
        # on an empty index first, where only the query can fail.
        self.queries = sqlite3.connect(":memory:")
        self.queries.execute(SEARCH)

    def close(self):
        self.queries.close()
        self.db.close()

    # --- writing ------------------------------------------------------------------------------------

    def note(self, text, by, runs=(), files=(), request=None, now=None):
        """A new note (`files`: (name, bytes) pairs), on disk before this returns; the entry as `entry()` shows
        it. `request`: the key of the request that asked for it (a note already made by it is answered again)."""
        now = round(time.time() if now is None else now, 3)
        attached = self._store_files(files)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            made = self._made_by(request, text, now)
            if made is None:
                made = self._add_entry(NOTE, None, now, by, sorted(set(runs)), text, attached, request, now)
        return self.entry(made)

    def edit(self, entry_id, text, by, files=(), request=None, now=None):
        """A new version of note `entry_id`: `text`, with the attachments of the version before and `files`."""
        now = round(time.time() if now is None else now, 3)
        self._editable(entry_id)   # before any file is stored for it
        attached = self._store_files(files)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            made = self._made_by(request, text, now)
            if made is None:
                version = self._editable(entry_id)
                before = json.loads(self.db.execute("SELECT attachments FROM versions WHERE entry = ? AND "
                                                    "version = ?", (entry_id, version)).fetchone()[0])
                known = {(a["sha256"], a["name"]) for a in before}
                attached = before + [a for a in attached if (a["sha256"], a["name"]) not in known]
                self._add_version(entry_id, version + 1, text, by, attached, request, now)
                made = entry_id
        return self.entry(made)

    def run_entry(self, run, text, time_s, pending, now=None):
        """Run `run`'s entry holds `text` (its record, made readable): made, or a new version when the text
        changed. `pending`: what its record still waits for (re-asked until empty). (MADE, CHANGED or None (the
        text was the same), the entry's number)."""
        now = round(time.time() if now is None else now, 3)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(f"SELECT e.id, e.version, v.text, e.pending, e.time FROM {LATEST} WHERE e.run = ?",
                                  (run,)).fetchone()
            if row is None:
                return MADE, self._add_entry(RUN, run, time_s, RUN, [run], text, [], None, now, pending)
            entry_id, version, old, was_pending, was_time = row
            waiting = json.dumps(pending) if pending else None
            if (waiting, time_s) != (was_pending, was_time):
                self.db.execute("UPDATE entries SET pending = ?, time = ? WHERE id = ?", (waiting, time_s, entry_id))
            if old == text:
                return None, entry_id
            self._add_version(entry_id, version + 1, text, RUN, [], None, now)
            return CHANGED, entry_id

    def _made_by(self, request, text, now):
        """The entry a repeat of `request` made already, or None."""
        if request is None:
            return None
        row = self.db.execute("SELECT entry FROM versions WHERE request = ? AND text = ? AND written > ?",
                              (request, text, now - REPEAT_S)).fetchone()
        return row and row[0]

    def _add_entry(self, kind, run, time_s, by, runs, text, attached, request, now, pending=None):
        cursor = self.db.execute(
            "INSERT INTO entries (kind, run, time, created, author, version, pending) VALUES (?, ?, ?, ?, ?, 0, ?)",
            (kind, run, time_s, now, by, json.dumps(pending) if pending else None))
        entry_id = cursor.lastrowid
        self.db.executemany("INSERT INTO links (run, entry) VALUES (?, ?)", [(r, entry_id) for r in runs])
        self._add_version(entry_id, 1, text, by, attached, request, now)
        return entry_id

    def _add_version(self, entry_id, version, text, by, attached, request, now):
        self.db.executemany("INSERT OR IGNORE INTO files (sha256, name, size, type, stored) VALUES (?, ?, ?, ?, ?)",
                            [(a["sha256"], a["name"], a["size"], a["type"], now) for a in attached])
        self.db.execute("INSERT INTO versions (entry, version, text, by, written, attachments, request) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (entry_id, version, text, by, now, json.dumps(attached),
                                                         request))
        self.db.execute("UPDATE entries SET version = ? WHERE id = ?", (version, entry_id))
        self.db.execute("DELETE FROM search WHERE rowid = ?", (entry_id,))
        self.db.execute("INSERT INTO search (rowid, text) VALUES (?, ?)", (entry_id, text))

    def _editable(self, entry_id):
        """The latest version of note `entry_id`; Unknown, or NotEditable for a run's entry."""
        row = self.db.execute("SELECT kind, version, run FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise Unknown("entry", f"no entry {entry_id} in the logbook")
        kind, version, run = row
        if kind == RUN:
            raise NotEditable(f"entry {entry_id} is run {run}'s: it follows the run catalog's record; write a note "
                              "on the run instead")
        return version

    def _store_files(self, files):
        """Each (name, bytes) on disk by its hash (once), before any entry names it; their descriptions."""
        attached = []
        for name, data in files:
            digest = hashlib.sha256(data).hexdigest()
            kind = file_type(name, data)
            path = self.files / digest
            if not (path.exists() and path.stat().st_size == len(data)):   # a whole file: written aside first
                aside = self.files / f".{digest}.{os.getpid()}"
                with open(aside, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(aside, path)
                sync_folder(self.files)
            attached.append({"name": name, "sha256": digest, "size": len(data), "type": kind})
        return attached

    # --- reading ------------------------------------------------------------------------------------

    def entry(self, entry_id, versions=False, budget=None, version=None):
        """Entry `entry_id` as it stands (its latest version), or as `version` was. With `versions`, each older
        version newest first, in full while the texts fit `budget` characters (then `text` null, `cut`)."""
        row = self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM {LATEST} WHERE e.id = ?", (entry_id,)).fetchone()
        if row is None:
            raise Unknown("entry", f"no entry {entry_id} in the logbook")
        shown = self._shown([row])[0]
        if version is not None and version != shown["version"]:
            old = self.db.execute("SELECT version, text, by, written, attachments FROM versions WHERE entry = ? AND "
                                  "version = ?", (entry_id, version)).fetchone()
            if old is None:
                raise Unknown("version", f"entry {entry_id} has no version {version} (it has 1 to {shown['version']})")
            shown.update(version_shown(old))
        if versions:
            left = budget - len(shown["text"]) if budget is not None else None
            older = []
            for old in self.db.execute("SELECT version, text, by, written, attachments FROM versions WHERE "
                                       "entry = ? AND version < ? ORDER BY version DESC", (entry_id, shown["version"])):
                one = version_shown(old)
                if left is not None:
                    left -= len(one["text"])
                    if left < 0:
                        one.update(text=None, cut=True)
                older.append(one)
            shown["versions"] = older
        return shown

    def entries(self, limit, offset=0, run=None):
        """The entries newest first (notes and runs' entries together; of run `run` alone when given): (a page
        of at most `limit` from `offset`, how many there are in all)."""
        where, args = ("WHERE e.id IN (SELECT entry FROM links WHERE run = ?)", (run,)) if run is not None else ("", ())
        rows = self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM {LATEST} {where} ORDER BY e.time DESC, e.id DESC "
                               "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        total = self.db.execute(f"SELECT count(*) FROM entries e {where}", args).fetchone()[0]
        return self._shown(rows), total

    def search(self, query, limit, offset=0):
        """Entries whose latest text matches the FTS5 `query`, newest first, each with a `snippet` (matches in
        **bold**): (at most `limit` from `offset`, whether there are more). Raises BadQuery."""
        try:
            self.queries.execute("SELECT rowid FROM search WHERE search MATCH ?", (query,)).fetchall()
        except sqlite3.OperationalError as exc:
            raise BadQuery(str(exc)) from None
        ids = [r[0] for r in self.db.execute(
            "SELECT e.id FROM search JOIN entries e ON e.id = search.rowid WHERE search MATCH ? "
            "ORDER BY e.time DESC, e.id DESC LIMIT ? OFFSET ?", (query, limit + 1, offset))]
        more, ids = len(ids) > limit, ids[:limit]
        rows = {r[0]: r for r in self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM {LATEST} WHERE e.id IN "
                                                 f"({','.join('?' * len(ids))})", ids)}
        snippets = dict(self.db.execute(
            f"SELECT rowid, snippet(search, 0, '**', '**', ' … ', ?) FROM search WHERE search MATCH ? AND rowid IN "
            f"({','.join('?' * len(ids))})", (SNIPPET_WORDS, query, *ids)))
        found = self._shown([rows[i] for i in ids])
        for hit in found:
            hit["snippet"] = snippets[hit["entry"]]
        return found, more

    def attachment(self, digest):
        """(name, size, type, bytes) of the attachment `digest`, checked against its hash."""
        row = self.db.execute("SELECT name, size, type FROM files WHERE sha256 = ?", (digest,)).fetchone()
        if row is None:
            raise Unknown("sha256", f"no attachment {digest} in the logbook")
        data = (self.files / digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BookError(f"attachment {digest}: the file {self.files / digest} no longer matches its hash")
        return (*row, data)

    def pending_runs(self):
        """{run: what its record still waits for} of runs' entries made from an incomplete record."""
        return {run: json.loads(pending) for run, pending in
                self.db.execute("SELECT run, pending FROM entries WHERE kind = ? AND pending IS NOT NULL", (RUN,))}

    def _shown(self, rows):
        """Entries as the logbook answers them, from rows of ENTRY_COLUMNS."""
        ids = [r[0] for r in rows]
        links = {}
        for run, entry_id in self.db.execute(f"SELECT run, entry FROM links WHERE entry IN ({','.join('?' * len(ids))})"
                                             " ORDER BY run", ids):
            links.setdefault(entry_id, []).append(run)
        shown = []
        for entry_id, kind, run, time_s, created, author, version, pending, text, by, written, attached in rows:
            one = {"entry": entry_id, "kind": kind, "runs": links.get(entry_id, []), "time": time_s,
                   "created": created, "author": author, "version": version, "text": text, "by": by,
                   "written": written, "attachments": json.loads(attached)}
            if kind == RUN:
                one.update(run=run, pending=json.loads(pending) if pending else [])
            shown.append(one)
        return shown


def version_shown(row):
    version, text, by, written, attached = row
    return {"version": version, "text": text, "by": by, "written": written, "attachments": json.loads(attached)}


def file_type(name, data):
    """The media type of an attachment: by its first bytes when they say, else by its name (Python's own table,
    the same on every machine), else text/plain for UTF-8 text."""
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    by_name = TYPES.guess_type(name)[0]
    if by_name:
        return by_name
    try:
        return "text/plain" if b"\0" not in data and data.decode("utf-8") else "application/octet-stream"
    except UnicodeDecodeError:
        return "application/octet-stream"
