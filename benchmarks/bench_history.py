"""History: values recorded per second by the historian, disk bytes per value, a 500-point query over 30 days.

(a) ingest: a client publishes messages of 50 numbers through a real server to a
real historian, 3 s at each rate of a ladder; a rate is kept up with when the
historian has recorded every value within 2 s of the last publication (it
writes once a second). Reference: a bare SQLite `executemany` insert of the same
(id, ts, value) rows into one table, in the same run.
(b) 30 days of one value at 1 Hz (2,592,000 values) written through the store
(the fine tier and the minute tier): the time, and the disk bytes per value.
Reference: the same rows inserted into a bare table (indexed by id and time): its time
and its disk bytes per value.
(c) a 500-point query (min, max, mean per bucket) over the 30 days, median of 5. The
store answers a range this long from its minute tier (after counting the fine values
in the range). Reference, like with like: the same GROUP BY over a bare table of the
same minute rows (min, max, sum, count per minute, made from the bare table by SQL),
median of 5. Beside it, not a reference: the GROUP BY over every value of the bare
table, what a history without a minute tier would do.
No targets: DAMIC-M publishes a few hundred numbers a second.

Run: python benchmarks/bench_history.py [--seconds-per-step 3] [--days 30]
"""

import argparse
import sqlite3
import statistics
import subprocess
import sys
import time

import common
from figures import Report

from runcontrol.client.client import Client
from clients.historystore import Store

NUMBERS_PER_MESSAGE = 50
LADDER = [5000, 20000, 80000, 160000, 240000, 320000]   # values per second
CATCH_UP_S = 2.0   # one write a second: a historian that keeps up has it all by the next but one
DAY = 86400


def recorded(op, historian):
    return op.request(historian, "status", timeout=10)["recorded"]


def ingest(server, folder, seconds_per_step):
    """The highest published rate (values/s) the historian recorded in full within CATCH_UP_S, and the lag."""
    db = folder / "ingest.sqlite"
    log = open(folder / "historian.log", "ab")
    historian = subprocess.Popen([sys.executable, "-m", "clients.historian", "--experiment", str(server.path),
                                  "--db", str(db)], cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    results = []
    try:
        experiment = str(server.path)
        with Client("feed", experiment=experiment, server=server.router) as feed, \
                Client("op", experiment=experiment, server=server.router) as op:
            feed.connect(10)
            op.connect(10)
            deadline = time.monotonic() + 30
            while "historian" not in {c["name"] for c in op.request(None, "_list")}:
                if time.monotonic() > deadline:
                    tail = (folder / "historian.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the historian did not register (exit status {historian.poll()}); "
                                       f"its log ends:\n{tail}")
                op.poll(0.1)
            expected = wait_subscribed(feed, op)
            for rate in LADDER:
                messages = int(rate * seconds_per_step / NUMBERS_PER_MESSAGE)
                gap = seconds_per_step / messages
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


def month(folder, days):
    """`days` at 1 Hz through the store, the same rows in a bare table; write times, sizes, query times."""
    now = time.time()
    since = now - days * DAY
    values = [(since + i, 140.0 + (i % 3600) / 100.0) for i in range(days * DAY)]
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
    bare.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    bare_size = sum(p.stat().st_size for p in folder.glob("bare.sqlite*"))
    width = (now - since) / 500
    fine_query_s = median_time(lambda: bare.execute(
        "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, min(value), max(value), avg(value) FROM fine "
        "WHERE id = 1 AND ts >= ? AND ts < ? GROUP BY b ORDER BY b", (since, width, since, now)).fetchall())
    bare.execute("CREATE TABLE minutes (id INTEGER NOT NULL, minute INTEGER NOT NULL, low REAL NOT NULL, "
                 "high REAL NOT NULL, total REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (id, minute))")
    bare.execute("INSERT INTO minutes SELECT id, CAST(ts / 60 AS INTEGER) AS m, min(value), max(value), sum(value), "
                 "count(*) FROM fine GROUP BY id, m")
    minute_query_s = median_time(lambda: bare.execute(
        "SELECT CAST((minute * 60 - ?) / ? AS INTEGER) AS b, min(low), max(high), sum(total) / sum(count) "
        "FROM minutes WHERE id = 1 AND minute >= ? AND minute < ? GROUP BY b ORDER BY b",
        (since, width, int(since // 60), int(now // 60) + 1)).fetchall())
    bare.close()
    return {"values": len(values), "store_s": store_s, "bare_s": bare_s, "bytes_per_value": size / len(values),
            "bare_bytes_per_value": bare_size / len(values), "query_s": query_s, "points": points,
            "bare_query_s": minute_query_s, "fine_query_s": fine_query_s}


def median_time(work, times=5):
    took = []
    for _ in range(times):
        start = time.perf_counter()
        work()
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds-per-step", type=float, default=3.0)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("history", seconds_per_step=args.seconds_per_step, days=args.days)
    folder = common.scratch("orbit-bench-history-")
    server = common.BenchServer(heartbeat=1.0, timeout=10.0).start()
    try:
        steps, _db = ingest(server, folder, args.seconds_per_step)
    finally:
        server.stop()
    for rate, achieved, kept, lag, missing in steps:
        print(f"(a) {rate:>6} values/s asked, {achieved:8.0f} published: "
              + (f"recorded in full, {lag:.2f} s after the last" if kept
                 else f"{missing} not recorded after {lag:.1f} s" if missing
                 else f"recorded in full only {lag:.1f} s after the last: a backlog"), flush=True)
    best = max((achieved for _, achieved, kept, _, _ in steps if kept), default=0)
    failed = next(((rate, lag, missing) for rate, _, kept, lag, missing in steps if not kept), None)
    m = month(folder, args.days)
    bare_rate = m["values"] / m["bare_s"]
    behind = "" if failed is None else (
        f" (backlog at {failed[0]:,}: all in {failed[1]:.1f} s)" if not failed[2]
        else f" (at {failed[0]:,}: {failed[2]:,} not recorded after {failed[1]:.1f} s)")
    span = f"{args.days} days"
    report.table(("", "Orbit", "bare SQLite", "ratio"), [
        ("(a) values recorded per second, keeping up", f"{best:,.0f}{behind}", f"{bare_rate:,.0f} rows/s inserted",
         f"{best / bare_rate:.2f}"),
        (f"(b) {span} at 1 Hz written", f"{m['values'] / m['store_s']:,.0f} values/s ({m['store_s']:.1f} s)",
         f"{bare_rate:,.0f} rows/s ({m['bare_s']:.1f} s)", f"{m['bare_s'] / m['store_s']:.2f}"),
        ("(b) disk per value", f"{m['bytes_per_value']:.1f} bytes (fine tier with its index, and the minute tier)",
         f"{m['bare_bytes_per_value']:.1f} bytes (the table with its index)",
         f"{m['bytes_per_value'] / m['bare_bytes_per_value']:.2f}"),
        (f"(c) 500-point query over {span}", f"{m['query_s'] * 1000:.1f} ms ({m['points']} points, from the minute "
         "tier)", f"{m['bare_query_s'] * 1000:.1f} ms (the same GROUP BY over the same minute rows)",
         f"{m['query_s'] / m['bare_query_s']:.2f}"),
        (f"(c) the same over every value (not a reference)", "",
         f"{m['fine_query_s'] * 1000:.1f} ms (GROUP BY over the {m['values']:,} rows)", "")])
    report.figure("(a) values recorded per second, keeping up", best, "{:,.0f}", bare_rate,
                  "bare SQLite executemany, rows/s")
    report.figure(f"(b) {span} at 1 Hz written, values/s", m["values"] / m["store_s"], "{:,.0f}", bare_rate,
                  "bare SQLite executemany")
    report.figure("(b) disk bytes per value", m["bytes_per_value"], "{:.1f}", m["bare_bytes_per_value"],
                  "the bare table with its index")
    report.figure(f"(c) 500-point query over {span}", m["query_s"] * 1000, "{:.1f} ms", m["bare_query_s"] * 1000,
                  "the same GROUP BY over the same minute rows, bare")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
