"""The run catalog on disk: one SQLite file holding every run's record, its facts for queries and its flags.

Owns the file (WAL, synchronous=FULL: every write is on disk when its call returns;
a schema version in `PRAGMA user_version`, migrated forward at open), the records
(`runs`), their facts (`facts`: one row per key and run, numbers and texts apart,
indexed for filters), every key a record has had (`keys`: a filter on any other is
refused), the full text of comments and whys (`texts`, FTS5), and the history of
each run's flag (`flags`). Answers filters as `catalogquery` defines them. Reads no
clock (times come in) and must not send messages: the run controller does.
"""

import contextlib
import difflib
import sqlite3
import threading
from pathlib import Path

import orjson

from runcontrol.control.catalogquery import (FIXED_KEYS, FULL_TEXT_KEYS, MANY_KEYS, ORDERING, WORD_RE, Filter,
                                             QueryError, entries, facts, parse, unknown_key)
from runcontrol.errors import RunControlError

SCHEMA_VERSION = 1
MIGRATIONS = {
    1: """
CREATE TABLE runs (number INTEGER PRIMARY KEY, record TEXT NOT NULL, recorded REAL, pending INTEGER NOT NULL);
CREATE INDEX runs_pending ON runs (number) WHERE pending > 0;
CREATE TABLE keys (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, family TEXT NOT NULL);
CREATE TABLE facts (run INTEGER NOT NULL, key INTEGER NOT NULL, num, text TEXT);
CREATE INDEX facts_num ON facts (key, num, run) WHERE num IS NOT NULL;
CREATE INDEX facts_text ON facts (key, text, run) WHERE text IS NOT NULL;
CREATE INDEX facts_run ON facts (run);
CREATE TABLE flags (run INTEGER NOT NULL, value TEXT NOT NULL, by TEXT, at REAL, why TEXT);
CREATE INDEX flags_run ON flags (run);
CREATE VIRTUAL TABLE texts USING fts5 (comment, why);
""",
}
FLAGS = ("good", "bad", "unknown")
MAX_RECORD_BYTES = 8 * 1024 * 1024
MAX_LIMIT = 10000
MAX_BY, MAX_WHY = 100, 2000
MAX_RUN = 2 ** 63 - 1
NUMBER, OBJECT, LIST = (int, float), dict, list
FIELD_TYPES = {"start": NUMBER, "end": NUMBER, "duration": NUMBER, "recorded": NUMBER, "result": str, "why": str,
               "comment": str, "params": OBJECT, "began_by": OBJECT, "ended_by": OBJECT, "participants": LIST,
               "problems": OBJECT, "settings": OBJECT, "settings_changed": OBJECT, "values": OBJECT,
               "alarms": LIST, "actions": LIST, "files": LIST, "readers": OBJECT, "flag": OBJECT, "pending": LIST,
               "excluded": OBJECT, "deferred": OBJECT, "pauses": LIST, "paused_s": NUMBER}
DAMAGED = ("not a database", "malformed", "corrupt")


class CatalogError(RunControlError):
    """The catalog's file cannot be opened, read or written; the message names it and what to do."""


class NoSuchRun(LookupError):
    """No record of that run in the catalog."""


class CatalogBook:
    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"{self.path}: cannot make its folder ({exc})") from None
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._open()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CatalogError(self._explain(exc)) from None
        except CatalogError:
            self.close()
            raise

    def _open(self):
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CatalogError(f"{self.path}: a catalog of version {version}, written by a newer Orbit (this one "
                               f"reads up to version {SCHEMA_VERSION}); run that Orbit, or move the file away")
        if version == 0:
            tables = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if tables:
                raise CatalogError(f"{self.path}: not a run catalog (it holds the tables {', '.join(tables[:5])}); "
                                   "give the catalog a file of its own")
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise CatalogError(f"{self.path}: SQLite will not keep a write-ahead log here (journal mode {mode}); "
                               "put the catalog on a local file system")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA cache_size=-32768")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[step].split(";\n"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {step}")
                self.db.execute("COMMIT")
            except sqlite3.DatabaseError:
                self.db.execute("ROLLBACK")
                raise
        self.db.executemany("INSERT OR IGNORE INTO keys (key, family) VALUES (?, 'run')", [(k,) for k in FIXED_KEYS])
        self._load_keys()

    def _load_keys(self):
        self._ids, self._families = {}, {}
        for ident, key, family in self.db.execute("SELECT id, key, family FROM keys"):
            self._ids[key] = ident
            self._families[key] = family

    def _explain(self, exc):
        if any(word in str(exc) for word in DAMAGED):
            return (f"{self.path}: damaged, not a readable catalog ({exc}). Move it away with its -wal and -shm "
                    f"files (keep them: `sqlite3 {self.path.name} .recover` saves what is left); a new, empty "
                    "catalog is made, and the run controller records again every ended run of its run log "
                    "(flags set by people are lost)")
        return (f"{self.path}: {exc}; check that the file and its folder are readable and writable by this user "
                "and that the disk is not full")

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    @contextlib.contextmanager
    def _using(self, write=False):
        """One call's access to the file: alone, in one transaction when it writes; SQLite's errors become
        CatalogError naming the file."""
        with self._lock:
            if self.db is None:
                raise CatalogError(f"{self.path}: the catalog is closed")
            try:
                if write:
                    self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                if write:
                    self.db.execute("COMMIT")
            except BaseException as exc:
                if write and self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                    self._load_keys()   # ids handed out in the transaction are gone with it
                if isinstance(exc, sqlite3.DatabaseError):
                    raise CatalogError(self._explain(exc)) from None
                raise

    # --- writing -------------------------------------------------------------------------------------

    def put(self, record):
        """Write `record` (a run's record, docs/protocol.md "The run catalog"), replacing the run's earlier one,
        with its facts, in one transaction on disk when this returns. Once a run has been flagged (`flag`), its
        latest flag is kept whatever `record` says. Raises ValueError when `record` has not the record's shape."""
        self.put_many([record])

    def put_many(self, records):
        """`put` for several records, in one transaction."""
        checked = [encoded(record) for record in records]
        with self._using(write=True):
            for number, record in checked:
                self._store(number, record, self._flag_now(number))

    def _flag_now(self, number):
        row = self.db.execute("SELECT value, by, at, why FROM flags WHERE run = ? ORDER BY rowid DESC LIMIT 1",
                              (number,)).fetchone()
        return None if row is None else dict(zip(("value", "by", "at", "why"), row))

    def _store(self, number, record, flag):
        if flag is not None:
            record = {**record, "flag": flag}
        text = orjson.dumps(record).decode()
        pending = record.get("pending")
        self.db.execute("INSERT INTO runs (number, record, recorded, pending) VALUES (?, ?, ?, ?) ON CONFLICT "
                        "(number) DO UPDATE SET record = excluded.record, recorded = excluded.recorded, "
                        "pending = excluded.pending",
                        (number, text, record.get("recorded"), len(pending) if isinstance(pending, list) else 0))
        self.db.execute("DELETE FROM facts WHERE run = ?", (number,))
        rows = []
        found, families = entries(record)
        for key, value in found.items():
            ident = self._id(key, families[key])
            for one in value if isinstance(value, list) else (value,):
                rows.append((number, ident, None, one) if isinstance(one, str) else (number, ident, one, None))
        self.db.executemany("INSERT INTO facts (run, key, num, text) VALUES (?, ?, ?, ?)", rows)
        self.db.execute("DELETE FROM texts WHERE rowid = ?", (number,))
        self.db.execute("INSERT INTO texts (rowid, comment, why) VALUES (?, ?, ?)",
                        (number, *(v if isinstance(v, str) else None for v in map(record.get, FULL_TEXT_KEYS))))

    def _id(self, key, family):
        ident = self._ids.get(key)
        if ident is None:
            ident = self.db.execute("INSERT INTO keys (key, family) VALUES (?, ?)", (key, family)).lastrowid
            self._ids[key], self._families[key] = ident, family
        return ident

    def flag(self, number, value, by, why, at):
        """Flag run `number` good, bad or unknown; `by`: who (a person or "rule"), `why`: text or None, `at`: epoch
        seconds. Every flag is kept; the record's "flag" is the latest. The updated record (as `get`).
        Raises NoSuchRun for a run not in the catalog, QueryError for a value outside FLAGS or a bad argument."""
        number = run_number(number)
        if value not in FLAGS:
            raise QueryError(f"flag {value!r:.40}: one of {', '.join(FLAGS)}")
        if not isinstance(by, str) or not 0 < len(by) <= MAX_BY:
            raise QueryError(f"flag 'by' {by!r:.40}: who flags, a name of 1 to {MAX_BY} characters")
        if why is not None and (not isinstance(why, str) or len(why) > MAX_WHY):
            raise QueryError(f"flag 'why': a text of at most {MAX_WHY} characters, or none")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise QueryError(f"flag 'at' {at!r:.40}: epoch seconds")
        with self._using(write=True) as db:
            row = db.execute("SELECT record FROM runs WHERE number = ?", (number,)).fetchone()
            if row is None:
                raise NoSuchRun(f"run {number} is not in the catalog (last: {self._last()})")
            db.execute("INSERT INTO flags (run, value, by, at, why) VALUES (?, ?, ?, ?, ?)",
                       (number, value, by, at, why))
            self._store(number, orjson.loads(row[0]), {"value": value, "by": by, "at": at, "why": why})
        return self.get(number)

    # --- reading -------------------------------------------------------------------------------------

    def get(self, number):
        """The record of run `number` with its "flag_history" (every flag given, oldest first), or None."""
        number = run_number(number)
        with self._using() as db:
            row = db.execute("SELECT record FROM runs WHERE number = ?", (number,)).fetchone()
            if row is None:
                return None
            history = [dict(zip(("value", "by", "at", "why"), r)) for r in
                       db.execute("SELECT value, by, at, why FROM flags WHERE run = ? ORDER BY rowid", (number,))]
        return {**orjson.loads(row[0]), "flag_history": history}

    def numbers(self):
        """The numbers of every run recorded."""
        with self._using() as db:
            return {r[0] for r in db.execute(*self._every_run())}

    def last(self):
        """The highest run number recorded; None for an empty catalog."""
        with self._using():
            return self._last()

    def _last(self):
        return self.db.execute("SELECT max(number) FROM runs").fetchone()[0]

    def pending(self):
        """The numbers of the runs whose record lists parts still pending, lowest first."""
        with self._using() as db:
            return [r[0] for r in db.execute("SELECT number FROM runs WHERE pending > 0 ORDER BY number")]

    def known_keys(self):
        """family -> the keys the catalog has seen (families: catalogquery.FAMILIES)."""
        with self._using():
            return self._seen()

    def _seen(self):
        seen = {}
        for key, family in self._families.items():
            seen.setdefault(family, []).append(key)
        return {family: sorted(keys) for family, keys in seen.items()}

    def find(self, filters, limit=100, offset=0):
        """(rows, total): the runs for which every filter holds, newest first, `limit` of them from `offset`,
        each row the record's facts (catalogquery.facts, with "run"); `total`: how many runs match in all.
        `filters`: parsed filters (catalogquery.parse), or what `parse` takes. Raises QueryError for a bad word,
        a key no run has had, or a bad limit or offset."""
        if not (isinstance(filters, list) and all(isinstance(f, Filter) for f in filters)):
            filters = parse(filters)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit {limit!r:.40}: a whole number from 1 to {MAX_LIMIT}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise QueryError(f"offset {offset!r:.40}: a whole number, 0 or more")
        with self._using() as db:
            for condition in filters:
                if condition.key not in self._ids:
                    raise QueryError(self._unknown(condition.key))
            sql, args = self._selection(filters)
            matching = [r[0] for r in db.execute(sql, args)]
            page = matching[offset:offset + limit]
            marks = ",".join("?" * len(page))
            records = dict(db.execute(f"SELECT number, record FROM runs WHERE number IN ({marks})", page))
        return [facts(orjson.loads(records[number])) for number in page], len(matching)

    def _unknown(self, key):
        near = difflib.get_close_matches(key, self._ids, n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        return unknown_key(key, self._seen(), f" (no run has had it{hint})")

    def _selection(self, filters):
        """SQL and its arguments: the matching run numbers, highest first."""
        positives, negatives, ranges = [], [], {}
        for condition in filters:
            if condition.op in ORDERING:
                ranges.setdefault(condition.key, []).append(condition)
            elif condition.op == "~":
                positives.append(self._search(condition))
            else:
                (negatives if condition.op == "!=" else positives).append(self._equal(condition))
        positives.extend(self._range(key, group) for key, group in ranges.items())
        parts = positives or [self._every_run()]
        sql = " INTERSECT ".join(p[0] for p in parts) + "".join(" EXCEPT " + n[0] for n in negatives)
        if len(parts) == 1 and not negatives and any(c.key in MANY_KEYS for c in filters):
            sql = f"SELECT DISTINCT * FROM ({sql})"   # a run with two alarms that match is one run
        return sql + " ORDER BY 1 DESC", [a for p in parts + negatives for a in p[1]]

    def _every_run(self):
        # from the index of the facts: a scan of `runs` reads every record's pages
        return "SELECT run FROM facts WHERE key = ? AND num IS NOT NULL", [self._ids["run"]]

    def _equal(self, condition):
        ident, value = self._ids[condition.key], condition.value
        if isinstance(value, str):
            return "SELECT run FROM facts WHERE key = ? AND text = ?", [ident, value]
        # a number also matches a text fact written the same way (a setting kept as the string "60")
        return ("SELECT run FROM (SELECT run FROM facts WHERE key = ? AND num = ? "
                "UNION SELECT run FROM facts WHERE key = ? AND text = ?)", [ident, value, ident, condition.text])

    def _range(self, key, group):
        where = " AND ".join(f"num {c.op} ?" for c in group)
        return f"SELECT run FROM facts WHERE key = ? AND {where}", [self._ids[key], *(c.value for c in group)]

    def _search(self, condition):
        if condition.key in FULL_TEXT_KEYS:
            words = " AND ".join(f'"{word}"*' for word in WORD_RE.findall(condition.value))
            return "SELECT rowid FROM texts WHERE texts MATCH ?", [f"{condition.key} : ({words})"]
        pattern = "%" + condition.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return ("SELECT run FROM facts WHERE key = ? AND text IS NOT NULL AND text LIKE ? ESCAPE '\\'",
                [self._ids[condition.key], pattern])


def run_number(number):
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_RUN:
        raise QueryError(f"run {number!r:.40}: a run number is a whole number from 1")
    return number


def encoded(record):
    """(number, record) of a record fit to store; ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"a run's record is an object, not {type(record).__name__}")
    number = record.get("run")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_RUN:
        raise ValueError(f"the record's 'run' {number!r:.40} is not a run number (a whole number from 1)")
    for field, kind in FIELD_TYPES.items():
        value = record.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"run {number}: the record's {field!r} is a {type(value).__name__}, "
                             f"not {'a number' if kind is NUMBER else kind.__name__} or null")
    flag = record.get("flag")
    if flag is not None and flag.get("value") not in FLAGS:
        raise ValueError(f"run {number}: the record's flag {flag.get('value')!r:.40} is not one of {', '.join(FLAGS)}")
    record = {k: v for k, v in record.items() if k != "flag_history"}   # the book keeps the flags' history
    try:
        text = orjson.dumps(record)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"run {number}: the record is not JSON ({exc})") from None
    if len(text) > MAX_RECORD_BYTES:
        raise ValueError(f"run {number}: the record is {len(text)} bytes, at most {MAX_RECORD_BYTES}")
    return number, orjson.loads(text)   # as `get` will give it back, so its facts are the same then as now
