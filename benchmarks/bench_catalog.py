"""The run catalog: queries over 100,000 runs, against a full scan that decodes every record.

A catalog of N runs (default 100,000) is generated into a scratch SQLite file through
`CatalogBook.put_many` (1,000 records a transaction): records as the run controller
writes them (docs/protocol.md, "The run catalog"), each with the settings of 15
programs (75 settings), 5 catalog values, 2 readers' counters, 4 files, a comment
from a vocabulary, params, sometimes alarms and operator actions, and a flag; the
settings drift from run to run as an experiment's do. Its generation time and size
are reported (no target). Each query (`CatalogBook.find`, parsing included, the first
100 rows and the total) is timed R times (default 20): median and p95, target under
200 ms (issue 29). Reference, in the same run: the naive way, a full scan that reads
every record and decodes it with `json.loads` in Python, testing the same condition
by hand (once per query by default); its count must equal the catalog's total. Export:
every row of the example query, found page by page, as CSV (as `send.py --csv` writes
it) and as JSON. Durable write: one `put` of a new run (fsynced before it returns).

Run: python benchmarks/bench_catalog.py [--runs 100000] [--repeat 20] [--scans 1]
"""

import argparse
import csv
import datetime
import io
import json
import random
import sqlite3
import statistics
import sys
import time

import common
from figures import Report

from runcontrol.control.catalogbook import MAX_LIMIT, CatalogBook

TARGET_MS = 200.0
BATCH = 1000
BASE = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
PERIOD_S = 900.0          # a run every 15 minutes on average: 100,000 runs cover about 3 years
VOCABULARY = ["dark current", "overnight darks", "bias scan", "noise check", "LED calibration", "calibration",
              "cold start", "warm up test", "readout test", "science run", "long exposure", "short exposure",
              "after pump restart", "vsub scan", "charge transfer", "hot pixels", "cosmics", "background"]
COMMENT_WEIGHTS = [12, 8, 6, 8, 3, 2, 1, 2, 4, 20, 6, 6, 1, 2, 2, 2, 5, 10]
WORDS = ["again", "with", "new", "settings", "check", "first", "ok", "see", "elog", "after", "fix", "night"]
RESULTS = ["ended"] * 85 + ["aborted"] * 5 + ["ended by alarm"] * 5 + ["failed"] * 2 + ["ended by shutdown"] * 3
OPERATORS = ["alice", "bob", "carol", "dmitri", "elena"]
FLAGS = ["good"] * 60 + ["bad"] * 15 + ["unknown"] * 25
ALARMS = ["cryo.temperature_high", "vacuum.pressure_high", "bias.current_high", "lta1.readout_stalled"]
LTAS = ("lta1", "lta2", "lta3", "lta4")


class Experiment:
    """The state that drifts from run to run: what the settings are at each run's begin."""

    def __init__(self, rng):
        self.rng = rng
        self.volts, self.setpoint, self.nsamp, self.seconds = 60, 140, 324, 600
        self.led = "off"

    def drift(self):
        r = self.rng
        if r.random() < 0.03:
            self.volts = r.choice((40, 50, 60, 70))
        if r.random() < 0.02:
            self.setpoint = r.choice((130, 135, 140, 145))
        if r.random() < 0.02:
            self.nsamp = r.choice((1, 100, 324, 1000))
        if r.random() < 0.05:
            self.seconds = r.choice((60, 300, 600, 1200, 3600))
        if r.random() < 0.05:
            self.led = r.choice(("off", "blue", "red"))

    def settings(self):
        settings = {
            "bias": {"volts": self.volts, "ramp_rate": 10, "enabled": True, "limit_volts": 80},
            "cryo": {"setpoint": self.setpoint, "p": 2.0, "i": 0.1, "d": 0.0, "heater_max": 50},
            "vacuum": {"pump": "on", "gauge": "pkr251", "interval_s": 1.0},
            "hv": {"volts": 120, "channel": 1, "limit_ua": 5},
            "leds": {"color": self.led, "pulse_us": 20, "enabled": self.led != "off"},
            "shutter": {"open": False}, "clock": {"source": "internal", "frequency_mhz": 15},
            "historian": {"retention_days": 30}, "monitor": {"period_s": 5}, "notifier": {"enabled": True},
            "web": {"port": 8080}}
        for lta in LTAS:
            settings[lta] = {"rows": 64, "cols": 700, "nsamp": self.nsamp, "ssamp": 200, "psamp": 200, "sinit": 30,
                             "pinit": 30, "binning": "1x1", "vdd": -22.0, "vr": -7.0, "clock_mode": "normal",
                             "exposure_s": self.seconds}
        return settings


def value(name, units, low, high, count):
    begin, end = low + (high - low) * 0.3, low + (high - low) * 0.6
    return {"id": f"cryo.values.{name}", "units": units, "begin": round(begin, 6), "end": round(end, 6),
            "min": round(low, 6), "mean": round((low + high) / 2, 6), "max": round(high, 6), "count": count}


def record(number, experiment, previous):
    r = experiment.rng
    experiment.drift()
    start = BASE + number * PERIOD_S + r.uniform(0, 60)
    duration = experiment.seconds + r.uniform(0, 30)
    result = r.choice(RESULTS)
    alarm = r.choice(ALARMS) if result == "ended by alarm" or r.random() < 0.03 else None
    in_sequence = r.random() < 0.5
    operator = None if in_sequence else r.choice(OPERATORS)
    sequence = {"id": f"s{number // 20}", "sequence": r.choice(("darks", "bias_scan", "calibration")),
                "step": number % 20, "loop": 0} if in_sequence else None
    settings = experiment.settings()
    changed = {program: {key: [previous[program][key], v] for key, v in values.items()
                         if previous and previous[program][key] != v}
               for program, values in settings.items()}
    temperature = experiment.setpoint + r.gauss(0, 0.4)
    seconds = round(duration)
    files = [{"program": lta, "path": f"/data/damicm/run_{number:06d}/{lta}_{i:04d}.fits", "size": 123456 * (i + 1),
              "sha256": f"{r.getrandbits(256):064x}", "images": 10} for lta in LTAS[:2] for i in range(2)]
    comment = r.choices(VOCABULARY, COMMENT_WEIGHTS)[0]
    if r.random() < 0.3:
        comment += " " + " ".join(r.sample(WORDS, 2))
    flag = r.choice(FLAGS)
    return {
        "run": number, "start": round(start, 3), "end": round(start + duration, 3), "duration": round(duration, 3),
        "result": result, "why": f"alarm {alarm}: over its limit" if result == "ended by alarm" else None,
        "comment": comment, "params": {"seconds": experiment.seconds, "images": r.choice((1, 10, 50))},
        "began_by": {"client": "sequencer" if in_sequence else "web", "operator": operator, "sequence": sequence},
        "ended_by": {"client": "run", "operator": operator, "alarm": alarm if result == "ended by alarm" else None,
                     "sequence": sequence, "signal": "SIGINT (Ctrl-C)" if result == "ended by shutdown" else None},
        "participants": list(LTAS), "problems": {"lta4": "refused: busy"} if result == "failed" else {},
        "settings": settings, "settings_changed": {p: c for p, c in changed.items() if c},
        "values": {"temperature": value("temperature", "K", temperature - 0.3, temperature + 0.3, seconds),
                   "pressure": value("pressure", "mbar", 1e-6, 1e-6 * r.uniform(1, 3), seconds),
                   "leakage": value("leakage", "pA", 0.5, r.uniform(0.6, 2.5), seconds),
                   "vsub": value("vsub", "V", experiment.volts - 0.1, experiment.volts + 0.1, seconds),
                   "heater": value("heater", "W", 1.0, r.uniform(1.5, 4.0), seconds)},
        "alarms": [{"name": alarm, "severity": "alarm", "raised": round(start + 10, 3), "cleared": None,
                    "message": f"{alarm}: over its limit"}] if alarm else [],
        "actions": [{"ts": round(start + 5, 3), "by": "alice", "what": "set_config", "detail": "bias volts 70 -> 60"}]
        if r.random() < 0.1 else [],
        "files": files,
        "readers": {lta: {"files": 2, "acquisitions": 20, "bytes": 655360, "resyncs": r.choice((0, 0, 0, 1)),
                          "lost_packets": r.choice((0,) * 19 + (r.randint(1, 500),)), "duplicate_packets": 0,
                          "late_packets": 0, "reconnects": 0} for lta in LTAS[:2]},
        "flag": {"value": flag, "by": None if flag == "unknown" else r.choice(OPERATORS + ["rule"]),
                 "at": None if flag == "unknown" else round(start + duration + 3600, 3),
                 "why": None if flag == "unknown" else "looked at the images"},
        "pending": [], "recorded": round(start + duration + 1, 3)}


def generate(book, runs, seed):
    experiment = Experiment(random.Random(seed))
    previous = None
    batch = []
    for number in range(1, runs + 1):
        made = record(number, experiment, previous)
        previous = made["settings"]
        batch.append(made)
        if len(batch) == BATCH:
            book.put_many(batch)
            batch = []
    if batch:
        book.put_many(batch)


def iso_day(day):
    return datetime.datetime.fromtimestamp(BASE + day * 86400, datetime.timezone.utc).date().isoformat()


def queries(runs):
    """(name, words, the same condition tested by hand on a decoded record)."""
    middle = runs // 2
    middle_day = int(middle * PERIOD_S // 86400)   # the day the time-range query asks for
    day, next_day = BASE + middle_day * 86400, BASE + (middle_day + 1) * 86400
    return [
        ("every run (no filter)", [], lambda r: True),
        ("by number range", [f"run>={middle}", f"run<{middle + 100}"], lambda r: middle <= r["run"] < middle + 100),
        ("by time range (one day)", [f"start>={iso_day(middle_day)}", f"start<{iso_day(middle_day + 1)}"],
         lambda r: day <= r["start"] < next_day),
        ("by comment text", ["comment~calibration"], lambda r: "calibration" in r["comment"].lower()),
        ("by params", ["params.seconds=3600"], lambda r: r["params"].get("seconds") == 3600),
        ("by settings", ["cryo.setpoint=135"], lambda r: r["settings"]["cryo"]["setpoint"] == 135),
        ("by catalog values", ["leakage.max>=2.4"], lambda r: r["values"]["leakage"]["max"] >= 2.4),
        ("by readers' counters", ["lta1.lost_packets>0"], lambda r: r["readers"]["lta1"]["lost_packets"] > 0),
        ("by alarm", ["alarm=vacuum.pressure_high"], lambda r: any(a["name"] == "vacuum.pressure_high"
                                                                   for a in r["alarms"])),
        ("by flag", ["flag=bad"], lambda r: r["flag"]["value"] == "bad"),
        ("example: flag=good bias.volts=60 temperature.max<140", ["flag=good", "bias.volts=60", "temperature.max<140"],
         lambda r: r["flag"]["value"] == "good" and r["settings"]["bias"]["volts"] == 60
         and r["values"]["temperature"]["max"] < 140),
    ]


def timed(work, times):
    took = []
    result = None
    for _ in range(times):
        began = time.perf_counter()
        result = work()
        took.append((time.perf_counter() - began) * 1000)
    return took, result


def scan(path, test):
    """The naive way: every record read and decoded in Python, the condition tested by hand; how many hold."""
    db = sqlite3.connect(path)
    try:
        return sum(1 for (text,) in db.execute("SELECT record FROM runs") if test(json.loads(text)))
    finally:
        db.close()


def every_row(book, words):
    rows, offset = [], 0
    while True:
        page, total = book.find(words, limit=MAX_LIMIT, offset=offset)
        rows.extend(page)
        offset += len(page)
        if offset >= total or not page:
            return rows


def as_csv(rows):
    out = io.StringIO()
    writer = csv.writer(out)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer.writerow(columns)
    writer.writerows([json.dumps(v) if isinstance(v, (dict, list)) else v for v in (row.get(c) for c in columns)]
                     for row in rows)
    return out.getvalue()


def ask(book, path, args, report):
    """Each query timed against its full scan: (table rows, wrong answers)."""
    rows, misses = [], []
    for name, words, test in queries(args.runs):
        took, (_page, total) = timed(lambda words=words: book.find(words, limit=100), args.repeat)
        scans, counted = timed(lambda test=test: scan(path, test), args.scans)
        if counted != total:
            misses.append(f"{name}: the catalog found {total}, the scan {counted}")
        median, p95, reference = statistics.median(took), common.percentile(took, 0.95), statistics.median(scans)
        print(f"{name}: {total:,} runs, median {median:.1f} ms, p95 {p95:.1f} ms; scan {reference:.0f} ms",
              flush=True)
        rows.append((name, f"`{' '.join(words)}`" if words else "", f"{total:,}", f"{median:.1f} ms",
                     f"{p95:.1f} ms", f"{reference:,.0f} ms"))
        report.figure(f"{name}, p95", p95, "{:.1f} ms", reference, "the full scan in Python",
                      target=("<", TARGET_MS))
    return rows, misses


def export(book, words):
    """(rows, CSV times, CSV text, JSON times, JSON text) of every row of `words`, 5 times each."""
    csv_took, csv_text = timed(lambda: as_csv(every_row(book, words)), 5)
    json_took, json_text = timed(lambda: json.dumps(every_row(book, words)), 5)
    return every_row(book, words), csv_took, csv_text, json_took, json_text


def durable_puts(book, first, seed, times=20):
    experiment = Experiment(random.Random(seed))
    took = []
    for number in range(first, first + times):
        made = record(number, experiment, None)
        began = time.perf_counter()
        book.put(made)
        took.append((time.perf_counter() - began) * 1000)
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=20, help="times each query is asked")
    parser.add_argument("--scans", type=int, default=1, help="times each full scan (the reference) is made")
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("catalog", runs=args.runs, repeat=args.repeat, scans=args.scans)
    folder = common.scratch("orbit-bench-catalog-")
    path = folder / "catalog.sqlite"
    with CatalogBook(path) as book:
        began = time.perf_counter()
        generate(book, args.runs, args.seed)
        generation_s = time.perf_counter() - began
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{args.runs:,} runs generated in {generation_s:.1f} s, {size / 1e6:.0f} MB", flush=True)
        rows, misses = ask(book, path, args, report)
        exported, csv_took, csv_text, json_took, json_text = export(book, queries(args.runs)[-1][1])
        put_took = durable_puts(book, args.runs + 1, args.seed + 1)
    report.table(("query", "words", "runs found", "median", "p95", "full scan (reference)"), rows,
                 title=f"{args.runs:,} runs; each query {args.repeat} times (first 100 rows and the total), "
                       f"each scan {args.scans} time(s)")
    report.table(("", "time"), [
        (f"generation: {args.runs:,} runs through put_many, {BATCH:,} a transaction", f"{generation_s:.1f} s"),
        ("the file", f"{size / 1e6:,.0f} MB ({size / args.runs / 1000:.1f} kB a run)"),
        (f"export of the example query, {len(exported):,} rows, CSV ({len(csv_text) / 1e6:.1f} MB), median of 5",
         f"{statistics.median(csv_took):.0f} ms"),
        (f"export of the example query, {len(exported):,} rows, JSON ({len(json_text) / 1e6:.1f} MB), median of 5",
         f"{statistics.median(json_took):.0f} ms"),
        ("one put of a new run, durable on return, median of 20", f"{statistics.median(put_took):.1f} ms")])
    report.figure(f"export of the example query as CSV ({len(exported):,} rows)", statistics.median(csv_took),
                  "{:.0f} ms")
    report.figure(f"export of the example query as JSON ({len(exported):,} rows)", statistics.median(json_took),
                  "{:.0f} ms")
    report.figure("one durable put", statistics.median(put_took), "{:.1f} ms")
    report.note(f"generation of {args.runs:,} runs: {generation_s:.1f} s (not a target)")
    for miss in misses:
        report.note(f"WRONG ANSWER: {miss}")
    status = report.finish()
    return 1 if misses else status


if __name__ == "__main__":
    sys.exit(main())
