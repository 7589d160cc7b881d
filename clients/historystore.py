"""The history of published numbers: an SQLite file, a fine tier of every value and a coarse one of minute buckets.

Owns writing values in batches, each (name, time) once (a value taken again, from
the server's replay, is left out), the minute tier (min, max, sum, count per name
and minute) kept beside the fine one, the mark up to which the history is
complete, retention, and answering a range of one or several names with at most
`points` buckets each (min, max, mean): from the fine tier, and from the minute
tier where the fine values are expired or too many to read. A range with no
value is no bucket: a gap stays a gap. Must not touch the bus.
"""

import math
import sqlite3
import time

MINUTE = 60.0
FINE_POINTS_LIMIT = 200000   # a range holding more fine values than this is answered from the minute tier
COMPLETE = "complete_until"  # marks: every value published up to this time is in the history
EXPIRED = "expired_before"   # marks: fine values before this time were deleted (the minute tier holds them)

SCHEMA = """
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS fine (id INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS minutes (id INTEGER NOT NULL, minute INTEGER NOT NULL, low REAL NOT NULL,
    high REAL NOT NULL, total REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (id, minute));
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, ts REAL NOT NULL);
"""
# Version 1: one value per name and time (files of version 0 had a plain index and may hold a value twice).
MIGRATE_TO_1 = """
BEGIN;
DELETE FROM fine WHERE rowid NOT IN (SELECT min(rowid) FROM fine GROUP BY id, ts);
DROP INDEX IF EXISTS fine_by_time;
CREATE UNIQUE INDEX IF NOT EXISTS fine_once ON fine (id, ts);
PRAGMA user_version = 1;
COMMIT;
"""

MINUTE_BUCKETS = (
    "SELECT max(CAST((minute * 60 - ?) / ? AS INTEGER), 0) AS b, min(low), max(high), sum(total), sum(count) "
    "FROM minutes WHERE id = ? AND minute >= ? AND minute < ? GROUP BY b ORDER BY b")
FINE_BUCKETS = (
    "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, min(value), max(value), sum(value), count(*) "
    "FROM fine WHERE id = ? AND ts >= ? AND ts < ? GROUP BY b ORDER BY b")


class Store:
    def __init__(self, path, retention_days=30.0):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if self.db.execute("PRAGMA user_version").fetchone()[0] < 1:
            self.db.executescript(MIGRATE_TO_1)
        self.retention_s = retention_days * 86400
        self.ids = dict(self.db.execute("SELECT name, id FROM names"))
        self.marks = dict(self.db.execute("SELECT key, ts FROM marks"))
        self.pending = []
        self._latest = {}   # id -> the time of its newest value (what is newer is new)

    def add(self, name, ts, value):
        self.pending.append((self._id(name), ts, value))

    def _id(self, name):
        known = self.ids.get(name)
        if known is None:
            self.db.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
            known = self.ids[name] = self.db.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()[0]
        return known

    def flush(self, complete_until=None):
        """Write what was added and is new, in one transaction, with `complete_until` (when later than the mark
        held): the history then holds every value published up to it. How many values were new."""
        rows = self._new_rows()
        complete = complete_until is not None and complete_until > self.marks.get(COMPLETE, -math.inf)
        if not rows and not complete:
            return 0
        with self.db:
            self.db.execute("BEGIN")
            self._insert(rows)
            if complete:
                self.db.execute("INSERT OR REPLACE INTO marks (key, ts) VALUES (?, ?)", (COMPLETE, complete_until))
        if complete:
            self.marks[COMPLETE] = complete_until
        for ident, ts, _ in rows:
            if ts > self._latest[ident]:
                self._latest[ident] = ts
        return len(rows)

    def _new_rows(self):
        """The rows added that the history does not hold yet, each once."""
        rows, self.pending = self.pending, []
        seen, new = set(), []
        for row in rows:
            key = row[:2]
            if key in seen:
                continue
            seen.add(key)
            if key[1] > self._newest(key[0]) or not self._holds(*key):
                new.append(row)
        return new

    def _newest(self, ident):
        newest = self._latest.get(ident)
        if newest is None:
            (found,) = self.db.execute("SELECT max(ts) FROM fine WHERE id = ?", (ident,)).fetchone()
            newest = self._latest[ident] = -math.inf if found is None else found
        return newest

    def _holds(self, ident, ts):
        return self.db.execute("SELECT 1 FROM fine WHERE id = ? AND ts = ?", (ident, ts)).fetchone() is not None

    def _insert(self, rows):
        buckets = {}
        for ident, ts, value in rows:
            key = (ident, int(ts // MINUTE))
            low, high, total, count = buckets.get(key, (value, value, 0.0, 0))
            buckets[key] = (min(low, value), max(high, value), total + value, count + 1)
        self.db.executemany("INSERT INTO fine (id, ts, value) VALUES (?, ?, ?)", rows)
        self.db.executemany(
            "INSERT INTO minutes (id, minute, low, high, total, count) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id, minute) DO UPDATE SET low = min(low, excluded.low), high = max(high, excluded.high), "
            "total = total + excluded.total, count = count + excluded.count",
            [(ident, minute, *figures) for (ident, minute), figures in buckets.items()])

    def complete_until(self):
        """The time up to which the history holds every value published; None for an empty history. A file
        written before this mark existed counts as complete up to its newest value."""
        if COMPLETE in self.marks:
            return self.marks[COMPLETE]
        newest = max((self._newest(ident) for ident in self.ids.values()), default=-math.inf)
        return None if newest == -math.inf else newest

    def expire(self, now=None):
        """Delete fine values older than the retention (the minute tier is kept ten times longer)."""
        now = time.time() if now is None else now
        before = max(now - self.retention_s, self.marks.get(EXPIRED, -math.inf))
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM fine WHERE ts < ?", (before,))
            self.db.execute("DELETE FROM minutes WHERE minute < ?", (int((now - 10 * self.retention_s) // MINUTE),))
            self.db.execute("INSERT OR REPLACE INTO marks (key, ts) VALUES (?, ?)", (EXPIRED, before))
        self.marks[EXPIRED] = before

    def names(self, prefixes):
        return sorted(n for n in self.ids if any(n.startswith(p) for p in prefixes))

    def query(self, prefixes, since, until, points):
        """{name: [[ts, min, max, mean], ...]} for the names starting with any of `prefixes`."""
        width = max((until - since) / max(points, 1), 1e-6)
        return {name: self._buckets(self.ids[name], since, until, width) for name in self.names(prefixes)}

    def summary(self, name, since, until):
        """`name` over [since, until]: the value in force at each end (the last one before it, else the first
        after `since`), min, mean, max and how many values, the one in force at `since` among them (it held
        then); all None (count 0) when the history has none."""
        ident = self.ids.get(name)
        if ident is None:
            return {"begin": None, "end": None, "min": None, "mean": None, "max": None, "count": 0}
        split = self._fine_from(ident, since, until, MINUTE)   # where fine values are expired, the minute tier
        low = high = total = None
        count = 0
        if split > since:
            low, high, total, count = self.db.execute(
                "SELECT min(low), max(high), sum(total), coalesce(sum(count), 0) FROM minutes "
                "WHERE id = ? AND minute >= ? AND minute < ?",
                (ident, int(since // MINUTE), math.ceil(split / MINUTE))).fetchone()
        fine_low, fine_high, fine_total, fine_count = self.db.execute(
            "SELECT min(value), max(value), sum(value), count(*) FROM fine WHERE id = ? AND ts >= ? AND ts <= ?",
            (ident, split, until)).fetchone()
        if fine_count:
            low = fine_low if low is None else min(low, fine_low)
            high = fine_high if high is None else max(high, fine_high)
            total, count = (total or 0.0) + fine_total, count + fine_count
        held = self._in_force(ident, since)   # the value at the start holds until the next one: it counts too
        if held is not None and not self._holds(ident, since):
            low = held if low is None else min(low, held)
            high = held if high is None else max(high, held)
            total, count = (total or 0.0) + held, count + 1
        return {"begin": held if held is not None else self._in_force(ident, since, until),
                "end": self._in_force(ident, until), "min": low, "mean": total / count if count else None,
                "max": high, "count": count}

    def _in_force(self, ident, ts, first_until=None):
        """The last value at or before `ts`; without one, the first after it up to `first_until` (if given)."""
        row = self.db.execute("SELECT value FROM fine WHERE id = ? AND ts <= ? ORDER BY ts DESC LIMIT 1",
                              (ident, ts)).fetchone()
        if row is None and first_until is not None:
            row = self.db.execute("SELECT value FROM fine WHERE id = ? AND ts > ? AND ts <= ? ORDER BY ts LIMIT 1",
                                  (ident, ts, first_until)).fetchone()
        return None if row is None else row[0]

    def _buckets(self, ident, since, until, width):
        split = self._fine_from(ident, since, until, width)
        rows = []
        if split > since:
            rows += self.db.execute(MINUTE_BUCKETS, (since, width, ident, int(since // MINUTE),
                                                     math.ceil(split / MINUTE)))
        if split < until:
            rows += self.db.execute(FINE_BUCKETS, (since, width, ident, split, until))
        return [[round(since + (b + 0.5) * width, 3), low, high, total / count]
                for b, low, high, total, count in merge_buckets(rows)]

    def _fine_from(self, ident, since, until, width):
        """Where in the range the fine tier takes over; before it the minute tier answers, because the fine
        values there are expired, or too many to read for buckets of a minute or more."""
        if width >= MINUTE:   # counted in the minute tier: a row a minute, not one a value
            (count,) = self.db.execute("SELECT sum(count) FROM minutes WHERE id = ? AND minute >= ? AND minute < ?",
                                       (ident, int(since // MINUTE), math.ceil(until / MINUTE))).fetchone()
            if (count or 0) > FINE_POINTS_LIMIT:
                return until
        expired = self.marks.get(EXPIRED)
        if expired is None:
            return since
        whole = (expired // MINUTE + 1) * MINUTE   # the first minute whose fine values are all still there
        return min(max(since, whole), until)

    def close(self):
        self.flush()
        self.db.close()


def merge_buckets(rows):
    """Rows (bucket, low, high, total, count) in bucket order, a bucket answered by both tiers made one."""
    merged = []
    for row in rows:
        if merged and merged[-1][0] == row[0]:
            b, low, high, total, count = merged[-1]
            merged[-1] = (b, min(low, row[1]), max(high, row[2]), total + row[3], count + row[4])
        else:
            merged.append(row)
    return merged
