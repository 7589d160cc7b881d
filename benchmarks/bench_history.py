"""History: values recorded per second by the historian, disk bytes per value, a 500-point query over 30 days.

(a) ingest: a client publishes messages of 50 numbers through a real server to a
real historian, 3 s at each rate of a ladder; a rate is kept up with when the
historian has recorded every value within 2 s of the last publication (it
writes once a second). Reference: a bare SQLite `executemany` insert of the same
(id, ts, value) rows into one table, in the same run.
(b) 30 days of one value at 1 Hz (2,592,000 values) written through the store
(the fine tier and the minute tier): the time, and the disk bytes per value.
(c) a 500-point query (min, max, mean per bucket) over the 30 days, median of 5.
Reference: the same GROUP BY over the bare table of the same values (indexed by
id and time), median of 5.

Run: python benchmarks/bench_history.py
"""

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from clients.client import Client
from clients.historystore import Store

NUMBERS_PER_MESSAGE = 50
LADDER = [5000, 20000, 80000, 160000, 240000, 320000]   # values per second
SECONDS_PER_STEP = 3.0
CATCH_UP_S = 2.0   # one write a second: a historian that keeps up has it all by the next but one
DAY = 86400


def recorded(op, historian):
    return op.request(historian, "status", timeout=10)["recorded"]


def ingest(server, folder):
    """The highest published rate (values/s) the historian recorded in full within CATCH_UP_S, and the lag."""
    db = folder / "ingest.sqlite"
    log = open(folder / "historian.log", "ab")
    historian = subprocess.Popen([sys.executable, "-m", "clients.historian", "--experiment", str(server.path),
                                  "--db", str(db)], cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    results = []
    try:
        with Client("feed", server=server.router) as feed, Client("op", server=server.router) as op:
            feed.connect(10)
            op.connect(10)
            deadline = time.monotonic() + 30
            while "historian" not in {c["name"] for c in op.request(None, "_list")}:
                if time.monotonic() > deadline:
                    raise RuntimeError("the historian did not register")
                op.poll(0.1)
            expected = wait_subscribed(feed, op)
            for rate in LADDER:
                messages = int(rate * SECONDS_PER_STEP / NUMBERS_PER_MESSAGE)
                gap = SECONDS_PER_STEP / messages
                start = time.monotonic()
                for i in range(messages):
                    feed.publish("values", {f"v{k}": float(i + k) for k in range(NUMBERS_PER_MESSAGE)})
                    feed.poll(max(0.0, start + (i + 1) * gap - time.monotonic()))
                sent_s = time.monotonic() - start
                expected += messages * NUMBERS_PER_MESSAGE
                ended = time.monotonic()
                got = recorded(op, "historian")
                while got < expected and time.monotonic() - ended < CATCH_UP_S:
                    op.poll(0.1)
                    got = recorded(op, "historian")
                lag = time.monotonic() - ended
                kept = got >= expected and lag <= CATCH_UP_S
                results.append((rate, messages * NUMBERS_PER_MESSAGE / sent_s, kept, lag, expected - got))
                expected = got  # what was lost is not waited for again
                if not kept:
                    break
    finally:
        common.stop_group(historian)
        log.close()
    return results, db


def wait_subscribed(feed, op):
    """Publish a marker until the historian records it; the count recorded then."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        feed.publish("marker", 1.0)
        feed.poll(0.2)
        op.poll(0.2)
        if op.request("historian", "history", name="feed.marker", since=-60).get("feed.marker"):
            return recorded(op, "historian")
    raise RuntimeError("the historian never heard the stream")


def bare_insert(rows, path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE fine (id INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL)")
    start = time.perf_counter()
    for chunk in range(0, len(rows), 50000):
        db.execute("BEGIN")
        db.executemany("INSERT INTO fine VALUES (?, ?, ?)", rows[chunk:chunk + 50000])
        db.execute("COMMIT")
    took = time.perf_counter() - start
    db.execute("CREATE INDEX fine_by_time ON fine (id, ts)")
    return db, took


def month(folder):
    """30 days at 1 Hz through the store, the same rows in a bare table; write times, sizes, query times."""
    now = time.time()
    since = now - 30 * DAY
    values = [(since + i, 140.0 + (i % 3600) / 100.0) for i in range(30 * DAY)]
    path = folder / "month.sqlite"
    store = Store(path, retention_days=60)
    start = time.perf_counter()
    for chunk in range(0, len(values), DAY):
        for ts, value in values[chunk:chunk + DAY]:
            store.add("cryo.values.temperature", ts, value)
        store.flush()
    store_s = time.perf_counter() - start
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(p.stat().st_size for p in folder.glob("month.sqlite*"))
    query_s = median_time(lambda: store.query(["cryo.values.temperature"], since, now, 500))
    points = len(store.query(["cryo.values.temperature"], since, now, 500)["cryo.values.temperature"])
    store.close()
    bare, bare_s = bare_insert([(1, ts, value) for ts, value in values], folder / "bare.sqlite")
    width = (now - since) / 500
    bare_query_s = median_time(lambda: bare.execute(
        "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, min(value), max(value), avg(value) FROM fine "
        "WHERE id = 1 AND ts >= ? AND ts < ? GROUP BY b ORDER BY b", (since, width, since, now)).fetchall())
    bare.close()
    return {"values": len(values), "store_s": store_s, "bare_s": bare_s, "bytes_per_value": size / len(values),
            "query_s": query_s, "bare_query_s": bare_query_s, "points": points}


def median_time(work, times=5):
    took = []
    for _ in range(times):
        start = time.perf_counter()
        work()
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def main():
    common.exit_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="orbit-bench-history-"))
    server = common.BenchServer(heartbeat=1.0, timeout=10.0).start()
    try:
        steps, db = ingest(server, folder)
    finally:
        server.stop()
    for rate, achieved, kept, lag, missing in steps:
        print(f"(a) {rate:>6} values/s asked, {achieved:8.0f} published: "
              + (f"recorded in full, {lag:.2f} s after the last" if kept
                 else f"{missing} not recorded after {lag:.1f} s" if missing
                 else f"recorded in full only {lag:.1f} s after the last: a backlog"))
    best = max((achieved for _, achieved, kept, _, _ in steps if kept), default=0)
    ingest_bytes = sum(p.stat().st_size for p in folder.glob("ingest.sqlite*"))
    m = month(folder)
    print(f"(a) historian keeps up with {best:.0f} values/s; bare SQLite inserts "
          f"{m['values'] / m['bare_s']:.0f} rows/s (ratio {best / (m['values'] / m['bare_s']):.3f})")
    print(f"(b) 30 days at 1 Hz through the store: {m['values'] / m['store_s']:.0f} values/s written "
          f"({m['store_s']:.1f} s; bare {m['bare_s']:.1f} s), {m['bytes_per_value']:.1f} disk bytes per value "
          f"(the ingest file: {ingest_bytes} bytes)")
    print(f"(c) 500-point query over 30 days: {m['query_s'] * 1000:.1f} ms ({m['points']} buckets), bare GROUP BY "
          f"{m['bare_query_s'] * 1000:.1f} ms (ratio {m['query_s'] / m['bare_query_s']:.3f})")
    for path in folder.iterdir():
        path.unlink()
    os.rmdir(folder)


if __name__ == "__main__":
    main()
