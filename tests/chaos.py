"""Chaos: the damicm experiment under random SIGKILLs and SIGSTOPs, with requests and runs going on.

  python -m tests.chaos [--seconds 60] [--seed N] [--runs 1]      (make chaos)

`run.py damicm --headless` (a copy on its own ports, in a temporary folder), then
for SECONDS a random process of the experiment (the server, the run controller,
any program) is SIGKILLed or SIGSTOPped every 2 to 5 s, while a client of the
library sends numbered requests to the server and to every program, and another
drives prepare/begin/end runs in a loop. Then it waits until every program is
RUNNING and registered again, for every request's final answer, stops run.py and
looks for anything left. The seed is printed first, so a run can be replayed.

What it holds the system to: no request answered twice (two different final
answers, or two from the server), no request made through the client library
left without a final answer, no run number handed out twice, every program back
within WHOLE_WITHIN_S of the last fault and every stopped process replaced (the
boards, which are not bus clients, by their liveness probes), nothing left after
the stop.
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
from runcontrol import pidfile, process
from runcontrol.errors import RunControlError
from tests.helpers import ROOT, damicm_copy, env_for_children, tagged_processes

WHOLE_WITHIN_S = 60.0
ANSWERS_WITHIN_S = 30.0
REQUEST_EVERY_S = 0.05
MAX_REQUESTS = 20000
FAULT_EVERY_S = (2.0, 5.0)
PROGRAMS = ("spy", "cryo", "vacuum", "bias", "lta1", "lta2", "monitor", "shell")


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
    """prepare_run, begin_run, end_run in a loop; every run number answered is kept."""

    def __init__(self, path, stop):
        super().__init__(daemon=True)
        self.path, self.stop_event = path, stop
        self.numbers, self.failures = [], collections.Counter()
        self.error = None

    def run(self):
        try:
            with Client("chaos-runs", experiment=str(self.path)) as client:
                client.connect(30)
                while not self.stop_event.is_set():
                    self._cycle(client)
        except Exception as exc:
            self.error = exc

    def _cycle(self, client):
        try:
            if client.request("run", "status", timeout=10)["state"] != "STOP":
                client.call({"to": "run", "cmd": "abort_run", "timeout": 5}, 20)
            self.numbers.append(client.call({"to": "run", "cmd": "prepare_run", "timeout": 5}, 20)["run"])
            client.call({"to": "run", "cmd": "begin_run", "timeout": 5, "params": {"seconds": 0.2}}, 20)
            client.poll(1.0)
            client.call({"to": "run", "cmd": "end_run", "timeout": 5}, 20)
        except RunControlError as exc:
            self.failures[type(exc).__name__] += 1
            client.poll(0.5)


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
    """Faults every 2 to 5 s for `seconds`; returns them and the time of the last one."""
    faults, last = [], time.monotonic()
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while time.monotonic() < deadline and len(faults) < 1000:
        pause.wait(rng.uniform(*FAULT_EVERY_S))
        targets = fault_targets(state)
        if not targets:
            continue
        name, pid = rng.choice(targets)
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


def chaos(seed, seconds, folder, log=print):
    """One chaos run; returns the report (a dict) with `problems` listing what did not hold."""
    rng = random.Random(seed)
    log(f"chaos seed {seed}, {seconds:g} s of faults")
    path = damicm_copy(folder)
    description = json.loads(path.read_text())
    description["server"]["stale_after"] = 4.0
    path.write_text(json.dumps(description))
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
        requests.done.wait(ANSWERS_WITHIN_S + WHOLE_WITHIN_S + 10)
        runs.join(60)
    finally:
        stop.set()
        code, killed = process.stop_group(launcher, 60)
        report["run_py"] = "killed" if killed else code
        if requests.client is not None:
            requests.done.wait(5)
            requests.client.close()
    judge(report, requests, runs, state)
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
    args = parser.parse_args(argv)
    failed = 0
    for number in range(args.runs):
        seed = args.seed if args.seed is not None and number == 0 else random.randrange(1 << 30)
        folder = Path(tempfile.mkdtemp(prefix="orbit-chaos-"))
        report = chaos(seed, args.seconds, folder, log=lambda text: print(text, flush=True))
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
