"""Chaos: the damicm experiment under random SIGKILLs and SIGSTOPs, with requests and runs going on.

  python -m tests.chaos [--seconds 60] [--seed N] [--runs 1] [--takes 10]      (make chaos)

`run.py damicm --headless` (a copy on its own ports, in a temporary folder), then
for SECONDS a random process of the experiment (the server, the run controller,
any program) is SIGKILLed or SIGSTOPped every 2 to 5 s, while a client of the
library sends numbered requests to the server and to every program, and another
drives prepare/begin/end runs in a loop between the runs of a sequence the
sequencer takes (`for` three cryocooler rates: `set` the rate, `repeat` runs of
1 s). The sequencer, the run controller and the server are each hit at least
once. Then it waits until every program is RUNNING and registered again, for
every request's final answer and for the sequence to end, stops run.py and
looks for anything left. The seed is printed first, so a run can be replayed.

What it holds the system to: no request answered twice (two different final
answers, or two from the server), no request made through the client library
left without a final answer, no run number handed out twice, every program back
within WHOLE_WITHIN_S of the last fault and every stopped process replaced (the
boards, which are not bus clients, by their liveness probes), nothing left after
the stop. And the sequence done within SEQUENCE_WITHIN_S of the last fault (a
pause nobody resumes is a stop), its steps each taken once: every run step with
exactly one run that ended in the run log (none skipped, none repeated), tagged
with its loop values, in step order, and every `set` step accepted once in the
settings log. And every run that ended in the run log recorded in the run catalog
with the same result.
"""

import argparse
import collections
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from runcontrol.client.client import Client
from runcontrol.control.catalogbook import CatalogBook
from runcontrol import pidfile, process
from runcontrol.errors import RunControlError
from tests.helpers import ROOT, damicm_copy, env_for_children, tagged_processes

WHOLE_WITHIN_S = 60.0
ANSWERS_WITHIN_S = 30.0
REQUEST_EVERY_S = 0.05
MAX_REQUESTS = 20000
FAULT_EVERY_S = (2.0, 5.0)
PROGRAMS = ("spy", "cryo", "vacuum", "bias", "lta1", "lta2", "monitor", "shell", "sequencer")
ALWAYS_HIT = ("server", "controller", "sequencer")   # each is a victim at least once
RUNS_CLIENT = "chaos-runs"
RUNS_APART_S = 3.0       # after each of its runs the run loop leaves the sequencer this long alone
SEQUENCER = "sequencer"
SEQUENCE_WITHIN_S = (60.0, 8.0)   # the sequence ends this long after the last fault: 60 s, and 8 s a run
PAUSED_FOR_S = 30.0      # a pause nobody resumes: the sequence is stuck
RATES = (25, 30, 35)     # cryo's `rate` (K/s, a live setting): one `set` step each, then TAKES runs
TAKES = 10
RUN_S = 1.0
ENDED = ("ended", "ended by alarm")   # a run of the sequence that took its data


class Observer(Client):
    """A client of the library that also sees every final answer as it arrives, repeats included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.finals = collections.defaultdict(list)

    def _on_answer(self, msg):
        if msg.get("cmd") in ("_reply", "_error") and msg.get("re") is not None:
            self.finals[msg["re"]].append((msg["cmd"], msg.get("ok"), msg.get("code"), msg.get("from")))
        super()._on_answer(msg)


class Requests(threading.Thread):
    """Numbered requests to the server and to every program, each kept until its final answer."""

    def __init__(self, path, stop):
        super().__init__(daemon=True)
        self.path, self.stop_event = path, stop
        self.sent = {}          # id -> target
        self.answers = {}       # id -> first final answer (protocol.Answer)
        self.client = None
        self.done = threading.Event()
        self.error = None

    def run(self):
        try:
            self.client = Observer("chaos-requests", experiment=str(self.path))
            self.client.connect(30)
            targets = ["server", *PROGRAMS]
            n, next_at = 0, time.monotonic()
            while not self.stop_event.is_set() and n < MAX_REQUESTS:
                if time.monotonic() >= next_at:
                    to = targets[n % len(targets)]
                    msg = {"cmd": "_status"} if to == "server" else {"to": to, "cmd": "status"}
                    pending = self.client.start({**msg, "id": f"q{n}"},
                                                on_answer=lambda answer, i=f"q{n}": self.answers.setdefault(i, answer))
                    self.sent[pending.id] = to
                    n += 1
                    next_at += REQUEST_EVERY_S
                self.client.poll(max(0.0, next_at - time.monotonic()))
            deadline = time.monotonic() + ANSWERS_WITHIN_S + WHOLE_WITHIN_S
            while len(self.answers) < len(self.sent) and time.monotonic() < deadline:
                self.client.poll(0.1)
        except Exception as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done.set()


class Runs(threading.Thread):
    """prepare_run, begin_run, end_run in a loop, between the sequencer's runs; every run number answered is kept."""

    def __init__(self, path, stop):
        super().__init__(daemon=True)
        self.path, self.stop_event = path, stop
        self.numbers, self.failures = [], collections.Counter()
        self.error = None
        self.stop_heard = False

    def run(self):
        try:
            with Client(RUNS_CLIENT, experiment=str(self.path)) as client:
                client.subscribe("event.run_state", self._heard)
                client.connect(30)
                while not self.stop_event.is_set():
                    self._cycle(client)
                for _ in range(5):   # its own run is not left open for the sequence to wait on
                    if self._cycle(client, end_only=True):
                        break
        except Exception as exc:
            self.error = exc

    def _heard(self, topic, event):
        self.stop_heard = self.stop_heard or event.get("state") == "STOP"

    def _cycle(self, client, end_only=False):
        """One run; with `end_only`, only its own open run aborted (True once none of its own is open)."""
        try:
            status = client.request("run", "status", timeout=10)
            if status["state"] != "STOP" and (status.get("current_run") or {}).get("by") != RUNS_CLIENT:
                if end_only or not self._another_ended(client):
                    return True
            elif status["state"] != "STOP":
                client.call({"to": "run", "cmd": "abort_run", "timeout": 5}, 20)
            if end_only:
                return True
            self.numbers.append(client.call({"to": "run", "cmd": "prepare_run", "timeout": 5}, 20)["run"])
            client.call({"to": "run", "cmd": "begin_run", "timeout": 5, "params": {"seconds": 0.2}}, 20)
            client.poll(1.0)
            client.call({"to": "run", "cmd": "end_run", "timeout": 5}, 20)
            client.poll(RUNS_APART_S)   # the sequencer takes a few runs before this one comes between again
        except RunControlError as exc:
            self.failures[type(exc).__name__] += 1
            client.poll(0.5)
        return False

    def _another_ended(self, client):
        """Whether the run in progress (the sequencer's) ended within 5 s: then prepare_run comes before the
        sequencer's, which looks at the run log first."""
        self.stop_heard = False
        deadline = time.monotonic() + 5.0
        while not self.stop_heard and not self.stop_event.is_set() and time.monotonic() < deadline:
            client.poll(0.1)
        return self.stop_heard and not self.stop_event.is_set()


def fault_targets(state):
    """(name, pid) of every process of the experiment a fault may hit now."""
    targets = [(name, pidfile.read(state / f"{name}.pid")) for name in ("server", "controller")]
    try:
        records = json.loads((state / "programs.json").read_text())
    except (OSError, ValueError):
        records = {}
    targets += [(name, r.get("pid")) for name, r in records.items() if isinstance(r, dict)]
    return [(name, pid) for name, pid in targets if isinstance(pid, int) and pid > 1]


def inject(rng, state, seconds, log):
    """Faults every 2 to 5 s for `seconds`, each of ALWAYS_HIT among them at a random turn within the faults there
    will be at least; returns them and the time of the last one."""
    faults, last = [], time.monotonic()
    deadline = time.monotonic() + seconds
    sure = max(len(ALWAYS_HIT), int(seconds // FAULT_EVERY_S[1]))
    owed = sorted(zip(rng.sample(range(sure), len(ALWAYS_HIT)), rng.sample(ALWAYS_HIT, len(ALWAYS_HIT))))
    pause = threading.Event()
    while time.monotonic() < deadline and len(faults) < 1000:
        pause.wait(rng.uniform(*FAULT_EVERY_S))
        targets = fault_targets(state)
        if not targets:
            continue
        due = [(turn, name) for turn, name in owed if turn <= len(faults) and name in dict(targets)]
        if due:
            owed.remove(due[0])
        name, pid = (due[0][1], dict(targets)[due[0][1]]) if due else rng.choice(targets)
        signum = rng.choice((signal.SIGKILL, signal.SIGSTOP))
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        last = time.monotonic()
        faults.append((name, pid, signum.name))
        log(f"fault {len(faults)}: {signum.name} {name} (pid {pid})")
    return faults, last


def whole(path):
    """Every program RUNNING and registered, as the run controller says; None while not (after a pause)."""
    threading.Event().wait(0.5)
    try:
        with Client(f"chaos-check-{os.getpid()}", experiment=str(path)) as client:
            client.connect(5)
            programs = client.request("run", "status", timeout=5)["programs"]
    except RunControlError:
        return None
    return all(p["state"] == "RUNNING" and p["registered"] is not False for p in programs.values()) or None


def still_stopped(faults):
    """The processes a SIGSTOP hit that are still there, stopped: nobody noticed they hang."""
    found = []
    for name, pid, sig in faults:
        try:
            if sig == "SIGSTOP" and psutil.Process(pid).status() == psutil.STATUS_STOPPED:
                found.append(f"{name} (pid {pid})")
        except psutil.NoSuchProcess:
            continue
    return found


class Sequence:
    """The sequence the sequencer takes under the faults: for each of RATES, a `set` of cryo's rate and `takes` runs
    of RUN_S. Written beside the experiment, queued and started, waited for; what it left is read back from the run
    controller (the run log, cryo's settings log)."""

    def __init__(self, path, takes):
        self.path, self.takes = path, takes
        self.entry, self.status, self.runs, self.settings = None, None, [], []
        self.log, self.done_after_s = [], None
        (path.parent / "sequences").mkdir(exist_ok=True)
        (path.parent / "sequences" / "chaos.json").write_text(json.dumps({"name": "chaos", "steps": [
            {"for": {"rate": list(RATES), "steps": [
                {"set": {"program": "cryo", "values": {"rate": "{rate}"}}},
                {"repeat": {"times": takes, "as": "take", "steps": [
                    {"run": {"comment": "chaos: cryo at {rate} K/s, take {take}", "seconds": RUN_S,
                             "params": {"rate": "{rate}", "take": "{take}"}}}]}}]}}]}))

    def steps(self):
        """Step index -> (kind, loop values), as the sequence unrolls."""
        kinds = [(kind, loop) for rate in RATES for kind, loop in
                 [("set", {"rate": rate}), *(("run", {"rate": rate, "take": t}) for t in range(1, self.takes + 1))]]
        return dict(enumerate(kinds))

    def start(self):
        with Client(f"chaos-sequence-{os.getpid()}", experiment=str(self.path)) as client:
            client.connect(30)
            self.entry = client.request(SEQUENCER, "queue", sequence="chaos", by="chaos", timeout=20)["id"]
            client.request(SEQUENCER, "start", by="chaos", timeout=20)

    def within_s(self):
        """How long after the last fault the sequence must have ended."""
        return SEQUENCE_WITHIN_S[0] + SEQUENCE_WITHIN_S[1] * len(RATES) * self.takes

    def finished(self):
        """The sequence's entry once it has ended (done, aborted, failed), else None."""
        finished = (self.status or {}).get("finished") or []
        return next((e for e in finished if e["id"] == self.entry), None)

    def finish(self, last_fault):
        """Wait for the end (`within_s()` after the last fault at most; a pause nobody resumes ends the wait too),
        then read the run log, cryo's settings log and the sequencer's log."""
        with Client(f"chaos-sequence-{os.getpid()}", experiment=str(self.path)) as client:
            client.connect(30)
            paused_since = None
            while self.finished() is None and time.monotonic() - last_fault < self.within_s():
                self.status = ask(client, SEQUENCER, "status") or self.status
                paused_since = (paused_since or time.monotonic()) if (self.status or {}).get("paused") else None
                if paused_since is not None and time.monotonic() - paused_since > PAUSED_FOR_S:
                    break
                client.poll(1.0)
            if self.finished() is not None:
                self.done_after_s = round(time.monotonic() - last_fault, 1)
            self.runs = ask(client, "run", "runs", n=1_000_000) or []
            self.settings = ask(client, "run", "config_log", program="cryo", n=1000) or []
            self.log = ask(client, SEQUENCER, "log", n=1000) or []


def ask(client, to, cmd, **fields):
    """`to`'s answer to `cmd`, tried for up to 30 s (a program just restarted); None when none came."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return client.request(to, cmd, timeout=10, **fields)
        except RunControlError:
            client.poll(1.0)
    return None


def chaos(seed, seconds, folder, log=print, takes=TAKES):
    """One chaos run (its sequence `takes` runs at each rate); returns the report (a dict) with `problems` listing
    what did not hold."""
    rng = random.Random(seed)
    log(f"chaos seed {seed}, {seconds:g} s of faults")
    path = damicm_copy(folder)
    description = json.loads(path.read_text())
    description["server"]["stale_after"] = 4.0
    path.write_text(json.dumps(description))
    sequence = Sequence(path, takes)
    state = folder / "var" / "run"
    with open(folder / "run.log", "wb") as out:
        launcher = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT,
                                    env=env_for_children(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    report = {"seed": seed, "problems": []}
    stop = threading.Event()
    requests, runs = Requests(path, stop), Runs(path, stop)
    try:
        started = time.monotonic()
        while not whole(path):
            if time.monotonic() - started > WHOLE_WITHIN_S:
                raise AssertionError("damicm did not come up")
        sequence.start()
        requests.start()
        runs.start()
        faults, last_fault = inject(rng, state, seconds, log)
        report["faults"] = collections.Counter(f"{sig} {name}" for name, _, sig in faults)
        back = None
        while back is None and time.monotonic() - last_fault < WHOLE_WITHIN_S:
            back = whole(path) and not still_stopped(faults) and time.monotonic() - last_fault
        report["whole_after_s"] = round(back, 1) if back is not None else None
        if back is None:
            report["problems"].append(f"not every program RUNNING and registered, and every stopped process "
                                      f"replaced, {WHOLE_WITHIN_S:g} s after the last fault (still stopped: "
                                      f"{still_stopped(faults) or 'none'})")
        stop.set()
        if requests.done.wait(ANSWERS_WITHIN_S + WHOLE_WITHIN_S + 10) and requests.client is not None:
            requests.client.close()   # not polled any more: it would only complain of a silent server
        runs.join(60)
        sequence.finish(last_fault)
    finally:
        stop.set()
        code, killed = process.stop_group(launcher, 60)
        report["run_py"] = "killed" if killed else code
        if requests.client is not None:
            requests.done.wait(5)
            requests.client.close()
    judge(report, requests, runs, state)
    judge_sequence(report, sequence)
    report["leftovers"] = [f"{p.pid} {p.name()}" for p in tagged_processes()
                           if p.pid != os.getpid() and launcher.pid != p.pid]
    if report["leftovers"]:
        report["problems"].append(f"left running after the stop: {report['leftovers']}")
        process.kill_all(tagged_processes())
    if report["run_py"] != 0:
        report["problems"].append(f"run.py ended with {report['run_py']}")
    return report


def judge(report, requests, runs, state):
    """Hold what happened against the guarantees; every breach goes into report["problems"]."""
    for thread in (requests, runs):
        if thread.error is not None:
            report["problems"].append(f"{type(thread).__name__} failed: {thread.error!r}")
    by_code = collections.Counter("ok" if a.ok else a.code for a in requests.answers.values())
    unanswered = [i for i in requests.sent if i not in requests.answers]
    duplicates = [i for i, finals in requests.client.finals.items()
                  if len(set(finals)) > 1 or sum(1 for f in finals if f[0] == "_error") > 1] \
        if requests.client is not None else []
    report.update(requests=len(requests.sent), answers=dict(by_code), unanswered=len(unanswered),
                  duplicates=len(duplicates), runs=len(runs.numbers), run_failures=dict(runs.failures))
    if unanswered:
        report["problems"].append(f"{len(unanswered)} request(s) never answered, e.g. "
                                  f"{[(i, requests.sent[i]) for i in unanswered[:5]]}")
    if duplicates:
        report["problems"].append(f"{len(duplicates)} request(s) answered twice, e.g. "
                                  f"{[(i, requests.client.finals[i]) for i in duplicates[:3]]}")
    groups = [number for number, _ in itertools.groupby(run_log(state, report["problems"]))]
    report["run_numbers"] = f"{len(runs.numbers)} prepared, {len(groups)} in the run log"
    if len(set(runs.numbers)) != len(runs.numbers) or runs.numbers != sorted(runs.numbers):
        report["problems"].append(f"run numbers repeated or went back: {runs.numbers}")
    if runs.numbers and not groups:
        report["problems"].append(f"{len(runs.numbers)} runs prepared, none in the run log")
    repeated = sorted(number for number, count in collections.Counter(groups).items() if count > 1)
    if repeated:
        report["problems"].append(f"run number(s) {repeated} in the run log apart from their own records")
    if groups != sorted(groups):
        report["problems"].append(f"the run log's numbers go back: {groups}")
    missing = sorted(set(runs.numbers) - set(groups))
    if missing:
        report["problems"].append(f"run(s) {missing} prepared but not in the run log")
    judge_catalog(report, state)


def judge_catalog(report, state):
    """Every run the run log says ended has its record in the run catalog, with the same outcome."""
    ended = {}
    for line in (state / "runs.jsonl").read_text(encoding="utf-8").splitlines() \
            if (state / "runs.jsonl").exists() else ():
        record = json.loads(line)
        ended[record["run"]] = record
    ended = {n: r for n, r in ended.items() if r.get("result") != "running"}
    with CatalogBook(state / "catalog.sqlite") as catalog:
        records = {n: catalog.get(n) for n in ended}
    wrong = sorted(n for n, r in ended.items() if records[n] is None or records[n]["result"] != r["result"])
    report["catalog"] = f"{len(ended) - len(wrong)} of {len(ended)} ended runs recorded"
    if wrong:
        report["problems"].append(f"run(s) {wrong} ended in the run log but not so in the run catalog")


def judge_sequence(report, sequence):
    """The sequence done; each run step with exactly one run that ended, with its loop values, in step order; each
    `set` step accepted once. A run an alarm ended (`ended by alarm`) is its step's run: the sequence ignores alarms,
    so the sequencer goes on from it. A step's attempts that failed at prepare_run or were aborted are counted apart,
    not as repeats: the sequencer takes the step again under a new attempt (and only an operator's skip, abort or
    pause at once, or an alarm the sequence retries after, aborts a run it took)."""
    problems, steps = report["problems"], sequence.steps()
    finished = sequence.finished()
    if finished is None or finished["state"] != "done":
        current = (sequence.status or {}).get("current") or {}
        problems.append(f"the sequence did not end done within {sequence.within_s():g} s of the last fault: "
                        f"{finished or {k: current.get(k) for k in ('index', 'phase', 'waiting_for')}}, "
                        f"paused: {(sequence.status or {}).get('paused')}")
    tagged = [r for r in sequence.runs if (r.get("sequence") or {}).get("entry") == sequence.entry]
    run_steps = [i for i, (kind, _) in steps.items() if kind == "run"]
    ended = {i: [r for r in tagged if r["sequence"]["step"] == i and r["result"] in ENDED] for i in run_steps}
    taken = sorted((r for rs in ended.values() for r in rs), key=lambda r: r["run"])
    disordered = [] if taken == sorted(taken, key=lambda r: r["sequence"]["step"]) else \
        [(r["run"], r["sequence"]["step"]) for r in taken]
    skipped = [(i, [r["result"] for r in tagged if r["sequence"]["step"] == i]) for i in run_steps if not ended[i]]
    repeated = [(i, [r["run"] for r in ended[i]]) for i in run_steps if len(ended[i]) > 1]
    applied = settings_applied(sequence)
    twice = [i for i, changes in applied.items() if len(changes) > 1]
    unset = [(i, [c["changes"] for c in changes]) for i, changes in applied.items()
             if not changes or changes[0]["changes"].get("rate", [None, None])[1] != steps[i][1]["rate"]]
    others = collections.Counter(r["result"] for r in tagged if r["result"] not in ENDED)
    pauses = [f"{e.get('why')} (by {e.get('by')})" for e in sequence.log if e.get("event") == "paused"]
    report["sequence"] = (f"{finished['state'] if finished else 'not ended'}: {len(taken)} runs taken "
                          f"({sum(r['result'] != 'ended' for r in taken)} ended by an alarm) for "
                          f"{len(run_steps)} run steps, {len(repeated)} repeated, {len(skipped)} skipped, "
                          f"{sum(others.values())} other attempts {dict(others)}; "
                          f"{sum(map(len, applied.values()))} settings applied for {len(applied)} set steps, "
                          f"{len(twice)} applied twice; {len(pauses)} pauses")
    report.update(sequence_done_after_s=sequence.done_after_s, sequence_pauses=pauses)
    for what, found in (
            ("run step(s) with no run that ended (step, results)", skipped),
            ("run step(s) with more than one run that ended (step, runs)", repeated),
            ("run(s) without their step's loop values", [r["run"] for r in taken if not looped(r, steps)]),
            ("run(s) of no run step, or left running",
             [r["run"] for r in tagged if r["sequence"]["step"] not in run_steps or r["result"] == "running"]),
            ("run(s) not in step order (run, step)", disordered),
            ("set step(s) applied more than once", twice),
            ("set step(s) not applied with their value (step, changes)", unset)):
        if found:
            problems.append(f"sequence: {what}: {found}")
    spared = [name for name in ALWAYS_HIT if not any(key.endswith(f" {name}") for key in report.get("faults", {}))]
    if spared:
        problems.append(f"never hit by a fault: {spared}")


def looped(record, steps):
    """Whether a run record carries the loop values of its step, in its tag and in its params."""
    loop = steps[record["sequence"]["step"]][1]
    return record["sequence"].get("loop") == loop and all((record.get("params") or {}).get(k) == v
                                                          for k, v in loop.items())


def settings_applied(sequence):
    """Set step index -> the accepted changes of cryo's settings log made for it (by `sequencer:<tag id>`)."""
    applied = {i: [] for i, (kind, _) in sequence.steps().items() if kind == "set"}
    for change in sequence.settings:
        parts = str(change.get("by")).split(":")   # sequencer:<book token>:<entry>:<step>:<attempt>
        if change.get("accepted") and len(parts) == 5 and parts[0] == SEQUENCER and parts[2] == sequence.entry \
                and parts[3].isdigit():
            applied.setdefault(int(parts[3]), []).append(change)
    return applied


def run_log(state, problems):
    """The run number of each record of the run log, in order; what cannot be read is a problem."""
    path = state / "runs.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        problems.append(f"the run log {path} cannot be read: {exc}")
        return []
    numbers = []
    for number, line in enumerate(lines, 1):
        try:
            numbers.append(int(json.loads(line)["run"]))
        except (ValueError, KeyError, TypeError):
            problems.append(f"{path} line {number} is not a run record: {line[:120]!r}")
    return numbers


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--runs", type=int, default=1, help="chaos runs in a row, each with its own seed")
    parser.add_argument("--takes", type=int, default=TAKES, help="the sequence's runs at each of its three rates")
    args = parser.parse_args(argv)
    failed = 0
    for number in range(args.runs):
        seed = args.seed if args.seed is not None and number == 0 else random.randrange(1 << 30)
        folder = Path(tempfile.mkdtemp(prefix="orbit-chaos-"))
        report = chaos(seed, args.seconds, folder, log=lambda text: print(text, flush=True), takes=args.takes)
        problems = report.pop("problems")
        print(json.dumps(report, indent=1, default=str))
        print(f"seed {seed}: " + ("all held" if not problems else "FAILED\n  " + "\n  ".join(problems)), flush=True)
        if problems:
            print(f"  its logs and state are kept in {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        failed += bool(problems)
    print(f"{args.runs - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
