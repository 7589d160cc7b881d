"""The history of published numbers: an SQLite file, a fine tier of every value and a coarse one of minute buckets.

Owns writing values in batches, the minute tier (min, max, sum, count per name
and minute) kept beside the fine one, retention, and answering a range of one
or several names with at most `points` buckets each (min, max, mean), from the
fine tier for short ranges and from the minute tier for long ones. A range with
no value is no bucket: a gap stays a gap. Must not touch the bus.
"""

import sqlite3
import time

MINUTE = 60.0
FINE_POINTS_LIMIT = 200000   # a range holding more fine values than this is answered from the minute tier

SCHEMA = """
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS fine (id INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS fine_by_time ON fine (id, ts);
CREATE TABLE IF NOT EXISTS minutes (id INTEGER NOT NULL, minute INTEGER NOT NULL, low REAL NOT NULL,
    high REAL NOT NULL, total REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (id, minute));
"""


class Store:
    def __init__(self, path, retention_days=30.0):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.retention_s = retention_days * 86400
        self.ids = dict(self.db.execute("SELECT name, id FROM names"))
        self.pending = []

    def add(self, name, ts, value):
        self.pending.append((self._id(name), ts, value))

    def _id(self, name):
        known = self.ids.get(name)
        if known is None:
            self.db.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
            known = self.ids[name] = self.db.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()[0]
        return known

    def flush(self):
        """Write what was added, in one transaction; how many values."""
        rows, self.pending = self.pending, []
        if not rows:
            return 0
        buckets = {}
        for ident, ts, value in rows:
            key = (ident, int(ts // MINUTE))
            low, high, total, count = buckets.get(key, (value, value, 0.0, 0))
            buckets[key] = (min(low, value), max(high, value), total + value, count + 1)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO fine (id, ts, value) VALUES (?, ?, ?)", rows)
            self.db.executemany(
                "INSERT INTO minutes (id, minute, low, high, total, count) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id, minute) DO UPDATE SET low = min(low, excluded.low), high = max(high, excluded.high), "
                "total = total + excluded.total, count = count + excluded.count",
                [(ident, minute, *figures) for (ident, minute), figures in buckets.items()])
        return len(rows)

    def expire(self, now=None):
        """Delete fine values older than the retention (the minute tier is kept ten times longer)."""
        now = time.time() if now is None else now
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM fine WHERE ts < ?", (now - self.retention_s,))
            self.db.execute("DELETE FROM minutes WHERE minute < ?", (int((now - 10 * self.retention_s) // MINUTE),))

    def last(self, name):
        ident = self.ids.get(name)
        row = self.db.execute("SELECT max(ts) FROM fine WHERE id = ?", (ident,)).fetchone() if ident else None
        return row[0] if row else None

    def names(self, prefixes):
        return sorted(n for n in self.ids if any(n.startswith(p) for p in prefixes))

    def query(self, prefixes, since, until, points):
        """{name: [[ts, min, max, mean], ...]} for the names starting with any of `prefixes`."""
        width = max((until - since) / max(points, 1), 1e-6)
        return {name: self._buckets(self.ids[name], since, until, width) for name in self.names(prefixes)}

    def _buckets(self, ident, since, until, width):
        (count,) = self.db.execute("SELECT count(*) FROM fine WHERE id = ? AND ts >= ? AND ts < ?",
                                   (ident, since, until)).fetchone()
        if count > FINE_POINTS_LIMIT and width >= MINUTE:
            rows = self.db.execute(
                "SELECT CAST((minute * 60 - ?) / ? AS INTEGER) AS b, min(low), max(high), sum(total) / sum(count) "
                "FROM minutes WHERE id = ? AND minute >= ? AND minute < ? GROUP BY b ORDER BY b",
                (since, width, ident, int(since // MINUTE), int(until // MINUTE) + 1))
        else:
            rows = self.db.execute(
                "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, min(value), max(value), avg(value) "
                "FROM fine WHERE id = ? AND ts >= ? AND ts < ? GROUP BY b ORDER BY b",
                (since, width, ident, since, until))
        return [[round(since + (b + 0.5) * width, 3), low, high, mean] for b, low, high, mean in rows]

    def close(self):
        self.flush()
        self.db.close()
