"""The logbook: full-text search over 100,000 entries, and how many notes a second are written to disk.

(a) 100,000 entries are generated into a scratch book through the book's own writes
(clients/elog/book.py; each a transaction, with synchronous=OFF while generating: the
rate with fsync is (b)'s): four notes in five, Markdown of 5 to 60 words drawn from a
shift's vocabulary (a few words common, most rare; "earthquake" put in 5 notes only,
"quench" in 50), spread over a year, and a run's entry for every fifth, a run catalog
record rendered by clients/elog/render.py; 2,000 notes are edited once. Each search (a
common word, a rarer one, one in 5 notes, a phrase, a prefix, two rare words, OR, NOT)
is asked 20 times through `Book.search` (the first 20 hits, newest first, with their
entries and snippets); the figures pool every search. Target: p95 under 200 ms (issue
29). Reference, in the same run: the same searches as LIKE scans of the latest texts
(a word: LIKE '%word%'), newest first, 20 rows, what a logbook without an index does:
quick while the newest entries hold the words, a scan of everything when few do.
(b) Notes written one after the other, each on disk (WAL, synchronous=FULL) before the
next: through `Book.note` into the book of (a); with a 100 KiB attachment each (the
file fsynced, and its folder, before the note); and through the bus: a client's
`note` to a real logbook program (`python -m clients.logbook`) on a real server, the
answer awaited. Reference: bare SQLite, one row (the same text) a transaction, WAL
with synchronous=FULL, in the same folder.

Run: python benchmarks/bench_logbook.py [--entries 100000] [--repeat 20] [--notes 300]
"""

import argparse
import random
import sqlite3
import statistics
import subprocess
import sys
import time

import common
from figures import Report

from clients.elog.book import Book
from clients.elog.render import render
from runcontrol.client.client import Client

YEAR = 365 * 86400
COMMON = ("run", "bias", "cryo", "temperature", "pressure", "images", "ccd", "shift", "check", "set", "dark",
          "readout", "board", "noise", "current", "vacuum", "pump", "voltage", "warm", "cold", "scan", "ok")
RARE = ("glitch", "compressor", "helium", "leak", "firmware", "cable", "fiber", "fuse", "ion", "baseline", "pedestal",
        "saturation", "crosstalk", "overscan", "bleed", "cosmic", "muon", "hot", "flicker", "drift")
PLANTED = {"earthquake": 5, "quench": 50}   # words put into that many notes only, at random
FILLER = ("the", "a", "at", "after", "before", "on", "of", "and", "to", "for", "with", "again", "still", "now", "seen",
          "looks", "fine", "high", "low", "stable", "back", "up", "down", "by", "hand", "night", "morning", "K", "V")
SEARCHES = {   # name: (FTS5 query, the words a LIKE scan must find, the words it must not)
    "a common word": ("temperature", ["temperature"], []),
    "a rarer word": ("compressor", ["compressor"], []),
    "a word in 5 notes": ("earthquake", ["earthquake"], []),
    "a phrase": ('"bias voltage"', ["bias voltage"], []),
    "a prefix": ("cryo*", ["cryo"], []),
    "two rare words": ("helium leak", ["helium", "leak"], []),
    "OR": ("quench OR earthquake", None, []),
    "NOT": ("pump NOT vacuum", ["pump"], ["vacuum"]),
}
ATTACHMENT = 100 * 1024


def sentence(rng, words):
    picked = []
    for _ in range(words):
        roll = rng.random()
        pool = COMMON if roll < 0.35 else RARE if roll < 0.40 else FILLER
        picked.append(rng.choice(pool))
    if rng.random() < 0.1:
        picked[rng.randrange(len(picked)):] = ["bias", "voltage"]
    return " ".join(picked)


def record(rng, run, start):
    return {"run": run, "start": start, "end": start + 600, "duration": 600.0, "result": rng.choice(
                ["ended", "ended", "ended", "aborted", "ended by alarm"]),
            "comment": sentence(rng, rng.randrange(2, 6)), "params": {"seconds": 600},
            "began_by": {"client": "sequencer", "operator": None, "sequence": {"sequence": "darks", "step": run % 7}},
            "ended_by": {"client": "run"}, "participants": ["lta1", "lta2"], "problems": {},
            "settings": {"bias": {"volts": 60, "ramp_rate": 10}, "cryo": {"set_point": 140, "rate": 20}},
            "settings_changed": {}, "values": {"temperature": {"id": "cryo.values.temperature", "units": "K",
                                                               "begin": 140.1, "end": 140.0, "min": 139.8,
                                                               "mean": 140.0, "max": 140.3, "count": 600}},
            "alarms": [], "actions": [], "files": [{"program": "lta1", "path": f"/data/run_{run:06d}/f1.fits",
                                                    "size": 1 << 20, "sha256": "ab" * 32, "images": 10}],
            "readers": {"lta1": {"files": 1, "lost_packets": 0}}, "flag": {"value": "good", "by": "rule"},
            "pending": []}


def generate(folder, entries, rng):
    """A book of `entries` entries (see the docstring); the seconds it took."""
    book = Book(folder)
    book.db.execute("PRAGMA synchronous=OFF")
    began = time.perf_counter()
    now = time.time()
    run, notes = 0, []
    planted = {}
    for word, count in PLANTED.items():
        for i in rng.sample([i for i in range(entries) if i % 5 != 4], count):
            planted.setdefault(i, []).append(word)
    for i in range(entries):
        when = now - YEAR + YEAR * i / entries
        if i % 5 == 4:
            run += 1
            book.run_entry(run, render(record(rng, run, when)), when, [], now=when)
        else:
            text = " ".join([sentence(rng, rng.randrange(5, 61)), *planted.get(i, [])])
            runs = [run] if run and rng.random() < 0.5 else []
            notes.append(book.note(text, rng.choice(("anna", "bob", "carla", "dmitri")), runs, now=when)["entry"])
    for entry in rng.sample(notes, min(2000, len(notes))):
        book.edit(entry, book.entry(entry)["text"] + " (edited: " + sentence(rng, 5) + ")", "anna", now=now)
    took = time.perf_counter() - began
    book.db.execute("PRAGMA synchronous=FULL")
    book.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return book, took


def like_scan(db, words, without):
    """The reference: the latest texts scanned with LIKE, newest first, 20 rows."""
    if words is None:   # OR
        where, args = "(v.text LIKE ? OR v.text LIKE ?)", ["%quench%", "%earthquake%"]
    else:
        where = " AND ".join(["v.text LIKE ?"] * len(words) + ["v.text NOT LIKE ?"] * len(without))
        args = [f"%{w}%" for w in words + without]
    return db.execute("SELECT e.id FROM entries e JOIN versions v ON v.entry = e.id AND v.version = e.version "
                      f"WHERE {where} ORDER BY e.time DESC, e.id DESC LIMIT 20", args).fetchall()


def timed(work, repeat):
    took = []
    for _ in range(repeat):
        began = time.perf_counter()
        work()
        took.append(time.perf_counter() - began)
    return took


def searches(book, repeat):
    """{name: (matches, FTS times, LIKE times)}."""
    found = {}
    for name, (query, words, without) in SEARCHES.items():
        matches = book.db.execute("SELECT count(*) FROM search WHERE search MATCH ?", (query,)).fetchone()[0]
        fts = timed(lambda: book.search(query, 20), repeat)
        like = timed(lambda: like_scan(book.db, words, without), repeat)
        found[name] = (query, matches, fts, like)
        print(f"(a) {name:14} {query!r:22} {matches:>7} matches: FTS median {statistics.median(fts) * 1000:.1f} ms,"
              f" LIKE median {statistics.median(like) * 1000:.1f} ms", flush=True)
    return found


def bare_rate(folder, texts):
    db = sqlite3.connect(folder / "bare.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL, by TEXT, written REAL)")
    began = time.perf_counter()
    for text in texts:
        with db:
            db.execute("BEGIN")
            db.execute("INSERT INTO notes (text, by, written) VALUES (?, ?, ?)", (text, "anna", time.time()))
    took = time.perf_counter() - began
    db.close()
    return len(texts) / took


def book_rate(book, texts, rng, attach):
    began = time.perf_counter()
    for text in texts:
        book.note(text, "anna", [], [("plot.png", rng.randbytes(ATTACHMENT))] if attach else [])
    return len(texts) / (time.perf_counter() - began)


def bus_rate(folder, texts):
    """Notes/s from a client to a real logbook program on a real server, one at a time."""
    server = common.BenchServer(heartbeat=1.0, timeout=10.0).start()
    log = open(folder / "logbook.log", "ab")
    logbook = subprocess.Popen([sys.executable, "-m", "clients.logbook", "--experiment", str(server.path),
                                "--state", str(folder / "bus")], cwd=common.ROOT, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with Client("writer", experiment=str(server.path), server=server.router) as writer:
            writer.connect(10)
            deadline = time.monotonic() + 30
            while "logbook" not in {c["name"] for c in writer.request(None, "_list")}:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the logbook did not register: {(folder / 'logbook.log').read_text()[-2000:]}")
                writer.poll(0.1)
            began = time.perf_counter()
            for text in texts:
                writer.request("logbook", "note", timeout=30, text=text, by="anna")
            return len(texts) / (time.perf_counter() - began)
    finally:
        common.stop_group(logbook)
        log.close()
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--notes", type=int, default=300)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("logbook", entries=args.entries, repeat=args.repeat, notes=args.notes)
    folder = common.scratch("orbit-bench-logbook-")
    rng = random.Random(29)
    book, generated_s = generate(folder / "book", args.entries, rng)
    size = sum(p.stat().st_size for p in (folder / "book").glob("logbook.sqlite*"))
    print(f"(a) {args.entries:,} entries generated in {generated_s:.1f} s, {size / 2**20:.0f} MiB", flush=True)
    found = searches(book, args.repeat)
    texts = [sentence(rng, rng.randrange(5, 61)) for _ in range(args.notes)]
    rates = {"bare": bare_rate(folder, texts), "book": book_rate(book, texts, rng, False),
             "attached": book_rate(book, texts[:max(1, args.notes // 3)], rng, True), "bus": bus_rate(folder, texts)}
    book.close()

    report.table(("search", "query", "matches", "FTS median", "FTS p95", "LIKE median", "LIKE p95"), [
        (name, f"`{query}`", f"{matches:,}", *(f"{f(t) * 1000:.1f} ms" for t in (fts, like)
                                                for f in (statistics.median, lambda x: common.percentile(x, 0.95))))
        for name, (query, matches, fts, like) in found.items()],
        title=f"(a) {args.entries:,} entries ({size / 2**20:.0f} MiB, generated in {generated_s:.0f} s); "
              f"each search {args.repeat} times, the first 20 hits newest first")
    report.table(("written one after the other, each on disk first", "notes/s"), [
        ("bare SQLite, a row a transaction (the reference)", f"{rates['bare']:,.0f}"),
        ("Book.note", f"{rates['book']:,.0f}"),
        (f"Book.note with a {ATTACHMENT // 1024} KiB attachment", f"{rates['attached']:,.0f}"),
        ("a client's `note` to the logbook program, through the server", f"{rates['bus']:,.0f}")],
        title=f"(b) {args.notes} notes")
    every_fts = [t for _, _, fts, _ in found.values() for t in fts]
    every_like = [t for _, _, _, like in found.values() for t in like]
    report.figure("(a) search, median", statistics.median(every_fts) * 1000, "{:.1f} ms",
                  statistics.median(every_like) * 1000, "a LIKE scan of the latest texts, median")
    report.figure("(a) search, p95", common.percentile(every_fts, 0.95) * 1000, "{:.1f} ms",
                  common.percentile(every_like, 0.95) * 1000, "a LIKE scan of the latest texts, p95",
                  target=("<", 200))
    report.figure("(b) notes written per second, each on disk first", rates["book"], "{:,.0f}", rates["bare"],
                  "bare SQLite, a row a transaction, synchronous=FULL")
    report.figure("(b) notes per second through the bus", rates["bus"], "{:,.0f}", rates["bare"],
                  "bare SQLite, a row a transaction, synchronous=FULL")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
