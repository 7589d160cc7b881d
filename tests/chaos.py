"""Chaos: the damicm experiment under random SIGKILLs and SIGSTOPs, with requests and runs going on.

  python -m tests.chaos [--seconds 60] [--seed N] [--runs 1] [--takes 10]      (make chaos)

`run.py damicm --headless` (a copy on its own ports, in a temporary folder, its
run participants ordered in three stages: lta1, then `drain`, a participant of
tests/programs that defers each `end` with progress, then lta2), then for
SECONDS a random process of the experiment (the server, the run controller,
any program) is SIGKILLed or SIGSTOPped every 2 to 5 s, while a client of the
library sends numbered requests to the server and to every program, and another
drives prepare/begin/end runs in a loop between the runs of a sequence the
sequencer takes (`for` three cryocooler rates: `set` the rate, `repeat` runs of
1 s), and a third watches the run controller's status for a transition under
way. The sequencer, the run controller, the server, and `drain` while it defers
a transition are each hit at least once. Then it waits until every program is
RUNNING and registered again, for every request's final answer and for the
sequence to end, ends what run is left open and takes one more run through the
three stages, stops run.py and looks for anything left. The seed is printed
first, so a run can be replayed.

What it holds the system to: no request answered twice (two different final
answers, or two from the server), no request made through the client library
left without a final answer, no run number handed out twice (not in the run
log, not to the run loop, not to `drain`), every program back within
WHOLE_WITHIN_S of the last fault and every stopped process replaced (the
boards, which are not bus clients, by their liveness probes), nothing left after
the stop. No transition stuck: each the run loop asks answered within
ANSWER_WITHIN_S (more when the server or the run controller was hit meanwhile)
and no longer shown under way by the status once answered, no stage seen under
way longer than STAGE_WITHIN_S, and after the chaos none under way and the run
control still working (an open run ended, a whole run taken, `drain` deferring
its end). And the sequence done within SEQUENCE_WITHIN_S of the last fault (a
pause nobody resumes is a stop), its steps each taken once: every run step with
exactly one run that ended in the run log (none skipped, none repeated), tagged
with its loop values, in step order, and every `set` step accepted once in the
settings log. And every run that ended in the run log complete there (every
participant named) and recorded in the run catalog with the same result, span,
participants, problems and deferrals; `drain` deferring some of them.
"""

import argparse
import collections
import datetime
import itertools
import json
import os
import random
import re
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
from runcontrol import pidfile, process, protocol
from runcontrol.errors import Refused, RequestTimeout, RunControlError
from tests.helpers import PROGRAMS as HELPER_PROGRAMS, ROOT, damicm_copy, env_for_children, tagged_processes

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
CLOSED = ("ended", "ended by alarm", "ended by shutdown", "aborted")   # a run log's outcome of a run that was open
DRAIN = "drain"          # a run participant (tests/programs/participant.py) that defers each end with progress
DEFER_S = 1.0            # how long it holds each end (progress every 0.2 s)
DEFER_LIMIT_S = 4.0      # its `transitions.defer_limit`
ORDERS = {"lta1": 100, DRAIN: 500, "lta2": 900}   # three stages: lta1 first on the way up, lta2 first down
RUNS_TIMEOUT_S = 5.0     # the `timeout` of the run loop's transitions
MOST_TIMEOUT_S = 10.0    # the longest `timeout` of any transition under the chaos (the sequencer's, an alarm's)
STUCK_MARGIN_S = 10.0
# A stage seen under way longer than this (taking back: TAKE_BACK_WITHIN_S) is stuck: every participant answers,
# defers up to its limit, or is given up on, within the transition's timeout or its defer limit.
STAGE_WITHIN_S = max(MOST_TIMEOUT_S, DEFER_LIMIT_S) + STUCK_MARGIN_S
TAKE_BACK_WITHIN_S = (len(ORDERS) - 1) * MOST_TIMEOUT_S + STUCK_MARGIN_S
# A transition of the run loop not answered within this is stuck: every stage, then every stage taken back.
ANSWER_WITHIN_S = len(ORDERS) * max(RUNS_TIMEOUT_S, DEFER_LIMIT_S) + (len(ORDERS) - 1) * RUNS_TIMEOUT_S \
    + STUCK_MARGIN_S
SETTLE_WITHIN_S = len(ORDERS) * STAGE_WITHIN_S + TAKE_BACK_WITHIN_S   # after the chaos, none under way by then
DEFERRAL_WAIT_S = 20.0   # how long the fault that kills `drain` mid-deferral waits at last for it to defer
WATCH_EVERY_S = 0.5


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


class Transitions:
    """The run transitions the chaos asks itself, each awaited to its final answer: how long each took, those not
    answered in time (stuck), those the status still showed under way once answered. `faults`: the faults so far,
    (name, pid, signal, when) each."""

    def __init__(self, faults):
        self.faults = faults
        self.took, self.stuck, self.not_over = [], [], []

    def ask(self, client, cmd, **fields):
        """`cmd` asked of the run controller (`timeout` RUNS_TIMEOUT_S unless given); its result, or the exception
        its answer stands for; RequestTimeout when none came within `within_s()` (a stuck transition)."""
        sent = time.monotonic()
        pending = client.start({"to": "run", "cmd": cmd, "timeout": RUNS_TIMEOUT_S, **fields})
        while pending.answer is None:
            waited = time.monotonic() - sent
            if waited > self.within_s(sent):
                client.abandon(pending)
                self.stuck.append(f"{cmd}: no answer in {waited:.0f} s")
                raise RequestTimeout(f"run did not answer {cmd!r} within {waited:.0f} s")
            client.poll(0.1)
        self.took.append(time.monotonic() - sent)
        self._over(client, cmd, pending.answer)
        return pending.answer.value()

    def within_s(self, sent):
        """How long a transition asked at `sent` may take: ANSWER_WITHIN_S, and WHOLE_WITHIN_S more when the
        server or the run controller was hit meanwhile (or just before: the request waits for them to be back)."""
        hit = any(name in ("server", "controller") and at >= sent - ANSWER_WITHIN_S
                  for name, _, _, at in list(self.faults))
        return ANSWER_WITHIN_S + (WHOLE_WITHIN_S if hit else 0.0)

    def _over(self, client, cmd, answer):
        """Once the run controller answered `cmd` (or said it failed), its status shows it under way no more."""
        if answer.ok:
            run = (answer.result or {}).get("run") if isinstance(answer.result, dict) else None
        elif answer.code == protocol.FAILED:
            found = re.search(r"of run (\d+) failed", answer.error)
            run = int(found[1]) if found else None
        else:
            return   # refused at once (busy, bad state), or the run controller was lost: nothing was under way
        try:
            holding = client.request("run", "status", timeout=5)["transition"]
        except RunControlError:
            return
        if holding and holding["transition"] == cmd and holding["run"] == run:
            self.not_over.append({"answer": "ok" if answer.ok else answer.error[:200], "status": holding})


class Runs(threading.Thread):
    """prepare_run, begin_run, end_run in a loop, between the sequencer's runs; every run number answered is kept."""

    def __init__(self, path, stop, transitions):
        super().__init__(daemon=True)
        self.path, self.stop_event, self.transitions = path, stop, transitions
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
                self.transitions.ask(client, "abort_run")
            if end_only:
                return True
            self.numbers.append(self.transitions.ask(client, "prepare_run")["run"])
            self.transitions.ask(client, "begin_run", params={"seconds": 0.2})
            client.poll(1.0)
            self.transitions.ask(client, "end_run")
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


def inject(rng, path, state, seconds, faults, log):
    """Faults every 2 to 5 s for `seconds`, appended to `faults` as (name, pid, signal, when); each of ALWAYS_HIT,
    and DRAIN while it defers a transition, at a random turn within the faults there will be at least (DRAIN looked
    at for a while, and owed again at the next turn when it did not defer meanwhile), those still owed when the time
    is up right after it. Returns the time of the last fault and what DRAIN was SIGKILLed holding (the run
    controller's status `transition` just before, each)."""
    killed = []
    deadline = time.monotonic() + seconds
    owed = (*ALWAYS_HIT, DRAIN)
    sure = max(len(owed), int(seconds // FAULT_EVERY_S[1]))
    owed = sorted(zip(rng.sample(range(sure), len(owed)), rng.sample(owed, len(owed))))
    pause = threading.Event()
    while time.monotonic() < deadline and len(faults) < 1000:
        pause.wait(rng.uniform(*FAULT_EVERY_S))
        targets = dict(fault_targets(state))
        due = [(turn, name) for turn, name in owed if turn <= len(faults) and name in targets]
        if due and due[0][1] == DRAIN:
            if kill_deferring(path, state, faults, killed, log, FAULT_EVERY_S[1]):
                owed.remove(due[0])
                continue
            due = due[1:]   # DRAIN stays owed; another fault this turn
        if due:
            owed.remove(due[0])
        if due or targets:
            hit(rng, *((due[0][1], targets[due[0][1]]) if due else rng.choice(sorted(targets.items()))), faults, log)
    for _, name in owed:
        if name == DRAIN:
            kill_deferring(path, state, faults, killed, log, DEFERRAL_WAIT_S)
            continue
        tried = time.monotonic()   # its process may be starting again: its pid is not known yet
        while not hit(rng, name, dict(fault_targets(state)).get(name), faults, log) \
                and time.monotonic() - tried < DEFERRAL_WAIT_S:
            pause.wait(0.5)
    return (faults[-1][3] if faults else time.monotonic()), killed


def hit(rng, name, pid, faults, log):
    """SIGKILL or SIGSTOP `name` (`pid`), noted in `faults`; whether it was (its pid None or gone: not)."""
    signum = rng.choice((signal.SIGKILL, signal.SIGSTOP))
    try:
        if pid is None:
            raise ProcessLookupError
        os.kill(pid, signum)
    except ProcessLookupError:
        log(f"no fault: {name} (pid {pid}) not there")
        return False
    faults.append((name, pid, signum.name, time.monotonic()))
    log(f"fault {len(faults)}: {signum.name} {name} (pid {pid})")
    return True


def kill_deferring(path, state, faults, killed, log, within_s):
    """SIGKILL DRAIN once the run controller's status shows it holding a transition (looked at for `within_s`),
    noted in `faults` and `killed`; whether it was."""
    deadline = time.monotonic() + within_s
    try:
        with Client(f"chaos-defer-{os.getpid()}", experiment=str(path)) as client:
            client.connect(5)
            while time.monotonic() < deadline:
                try:
                    holding = client.request("run", "status", timeout=2)["transition"]
                except RunControlError:
                    holding = None
                pid = dict(fault_targets(state)).get(DRAIN)
                if holding and DRAIN in holding["holders"] and is_drain(pid):
                    os.kill(pid, signal.SIGKILL)
                    faults.append((DRAIN, pid, "SIGKILL", time.monotonic()))
                    killed.append({**holding, "killed_at": faults[-1][3], "killed_on": time.time()})
                    log(f"fault {len(faults)}: SIGKILL {DRAIN} (pid {pid}) holding {holding['transition']} of run "
                        f"{holding['run']}, stage {holding['stage']} of {holding['stages']}: "
                        f"{holding['holders'][DRAIN]['text']}")
                    return True
                client.poll(0.1)
    except (RunControlError, ProcessLookupError):
        pass
    log(f"{DRAIN} not seen deferring a transition within {within_s:g} s")
    return False


def is_drain(pid):
    """Whether `pid` is DRAIN's process (the programs file may not have its latest yet)."""
    try:
        argv = psutil.Process(pid).cmdline() if pid is not None else []
    except psutil.Error:
        return False
    return DRAIN in argv and any(arg.endswith("participant.py") for arg in argv)


class Watch(threading.Thread):
    """The run controller's status every WATCH_EVERY_S: a transition seen at one stage longer than STAGE_WITHIN_S
    (taking back, TAKE_BACK_WITHIN_S) is stuck. A status not answered starts the watch over (a run controller killed
    or stopped takes its transition with it)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.halt = path, threading.Event()
        self.stuck = {}        # (transition, run, stage, taking back) -> the status `transition`, and how long seen
        self.longest_s = 0.0   # the longest any stage was seen under way
        self.seen = 0          # statuses with a transition under way
        self.error = None

    def run(self):
        try:
            with Client(f"chaos-watch-{os.getpid()}", experiment=str(self.path)) as client:
                client.connect(30)
                key = since = None
                while not self.halt.is_set():
                    try:
                        holding = client.request("run", "status", timeout=5)["transition"]
                    except RunControlError:
                        key = None
                        client.poll(WATCH_EVERY_S)
                        continue
                    now = time.monotonic()
                    seen = holding and (holding["transition"], holding["run"], holding["stage"],
                                        holding["taking_back"])
                    if seen != key:
                        key, since = seen, now
                    if key:
                        self.seen += 1
                        self.longest_s = max(self.longest_s, now - since)
                        if now - since > (TAKE_BACK_WITHIN_S if key[3] else STAGE_WITHIN_S):
                            self.stuck[key] = {**holding, "seen_s": round(now - since, 1)}
                    client.poll(WATCH_EVERY_S)
        except Exception as exc:  # reported by the main thread
            self.error = exc


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
    for name, pid, sig, _ in faults:
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
    path.write_text(json.dumps(staged(description, folder)))
    sequence = Sequence(path, takes)
    state = folder / "var" / "run"
    with open(folder / "run.log", "wb") as out:
        launcher = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT,
                                    env=env_for_children(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    report = {"seed": seed, "problems": []}
    stop, faults = threading.Event(), []
    transitions = Transitions(faults)
    requests, runs, watch = Requests(path, stop), Runs(path, stop, transitions), Watch(path)
    killed = []
    try:
        started = time.monotonic()
        while not whole(path):
            if time.monotonic() - started > WHOLE_WITHIN_S:
                raise AssertionError("damicm did not come up")
        sequence.start()
        for thread in (requests, runs, watch):
            thread.start()
        last_fault, killed = inject(rng, path, state, seconds, faults, log)
        report["faults"] = collections.Counter(f"{sig} {name}" for name, _, sig, _ in faults)
        back_whole(report, path, faults, last_fault)
        stop.set()
        if requests.done.wait(ANSWERS_WITHIN_S + WHOLE_WITHIN_S + 10) and requests.client is not None:
            requests.client.close()   # not polled any more: it would only complain of a silent server
        runs.join(60)
        sequence.finish(last_fault)
        settle(report, path, transitions, runs)
    finally:
        stop.set()
        watch.halt.set()
        code, stopped = process.stop_group(launcher, 60)
        report["run_py"] = "killed" if stopped else code
        if requests.client is not None:
            requests.done.wait(5)
            requests.client.close()
        watch.join(10)
    judge(report, requests, runs, state)
    judge_transitions(report, transitions, watch, folder, state)
    judge_kills(report, killed, faults, folder, state)
    judge_sequence(report, sequence)
    report["leftovers"] = [f"{p.pid} {p.name()}" for p in tagged_processes()
                           if p.pid != os.getpid() and launcher.pid != p.pid]
    if report["leftovers"]:
        report["problems"].append(f"left running after the stop: {report['leftovers']}")
        process.kill_all(tagged_processes())
    if report["run_py"] != 0:
        report["problems"].append(f"run.py ended with {report['run_py']}")
    return report


def back_whole(report, path, faults, last_fault):
    """Wait until every program is RUNNING and registered and every stopped process replaced (a problem when not
    WHOLE_WITHIN_S after the last fault)."""
    back = None
    while back is None and time.monotonic() - last_fault < WHOLE_WITHIN_S:
        back = (whole(path) and not still_stopped(faults) and time.monotonic() - last_fault) or None
    report["whole_after_s"] = round(back, 1) if back is not None else None
    if back is None:
        report["problems"].append(f"not every program RUNNING and registered, and every stopped process "
                                  f"replaced, {WHOLE_WITHIN_S:g} s after the last fault (still stopped: "
                                  f"{still_stopped(faults) or 'none'})")


def staged(description, folder):
    """damicm's `description` with its run participants in three stages (ORDERS): lta1, DRAIN, lta2; DRAIN defers
    each end DEFER_S with progress (up to DEFER_LIMIT_S), recording every transition it is told in drain.jsonl."""
    description["programs"][DRAIN] = {
        "cmd": ["python", str(HELPER_PROGRAMS / "participant.py"), DRAIN, str(folder / "drain.jsonl"),
                "--defer", "end", str(DEFER_S)],
        "cwd": str(ROOT), "client": DRAIN, "participant": True, "transitions": {"defer_limit": DEFER_LIMIT_S}}
    for name, order in ORDERS.items():
        description["programs"][name].setdefault("transitions", {})["order"] = order
    return description


def settle(report, path, transitions, runs):
    """After the chaos: no transition under way within SETTLE_WITHIN_S, a run left open ended (aborted when it
    cannot end), then a whole run taken through the three stages, DRAIN deferring its end; else a problem."""
    problems, done = report["problems"], []
    try:
        with Client(f"chaos-settle-{os.getpid()}", experiment=str(path)) as client:
            client.connect(30)
            status = idle(client)
            if status is None or status["transition"] is not None:
                problems.append(f"after the chaos, a transition under way {SETTLE_WITHIN_S:g} s on (stuck): "
                                f"{status['transition'] if status else 'the run controller did not answer'}")
                return
            if status["state"] != "STOP":
                done.append(close_run(client, transitions, status["state"]))
            prepared = transitions.ask(client, "prepare_run")
            runs.numbers.append(prepared["run"])
            transitions.ask(client, "begin_run", comment="chaos: after the chaos", params={"seconds": 0.2})
            ended = transitions.ask(client, "end_run")
            status = client.request("run", "status", timeout=10)
    except RunControlError as exc:
        problems.append(f"after the chaos, the run control did not work: {exc!r} (done before: {done or 'nothing'})")
        return
    stages = [[name] for name in sorted(ORDERS, key=ORDERS.get)]
    held = (ended.get("deferred") or {}).get(DRAIN)
    if prepared.get("stages") != stages or ended.get("problems") or held is None or status["state"] != "STOP" \
            or status["transition"] is not None:
        problems.append(f"after the chaos, run {prepared['run']} not taken through the stages {stages} with "
                        f"{DRAIN} deferring its end and nothing left under way: prepared {prepared}, ended {ended}, "
                        f"then {status['state']} with {status['transition']} under way")
    report["settled"] = "; ".join([*done, f"run {prepared['run']} taken in stages {prepared.get('stages')}, its end "
                                   f"held {held} s by {DRAIN}"])


def idle(client):
    """The run controller's status once no transition is under way (or SETTLE_WITHIN_S on); None: no answer."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    status = ask(client, "run", "status")
    while status is not None and status["transition"] is not None and time.monotonic() < deadline:
        client.poll(0.5)
        status = ask(client, "run", "status") or status
    return status


def close_run(client, transitions, state):
    """End the run left open (abort it when in READY, or when it cannot end); what was done, in words."""
    said = ""
    if state in ("RUN", "PAUSED"):
        try:
            return f"run {transitions.ask(client, 'end_run')['run']} left open ended"
        except Refused as exc:
            said = f" (it could not end: {exc})"
    return f"run {transitions.ask(client, 'abort_run')['run']} left open aborted{said}"


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
    """Every run the run log says ended is complete there (every participant named, its end, its start when it
    ran) and has its record in the run catalog, with the same outcome, span, participants, problems and deferrals."""
    ended = {n: r for n, r in run_records(state).items() if r.get("result") != "running"}
    with CatalogBook(state / "catalog.sqlite") as catalog:
        records = {n: catalog.get(n) for n in ended}
    wrong = sorted(n for n, r in ended.items() if records[n] is None or
                   any(records[n].get(key) != (r.get(key) or empty) for key, empty in CATALOGUED.items()))
    report["catalog"] = f"{len(ended) - len(wrong)} of {len(ended)} ended runs recorded"
    if wrong:
        shown = [(ended[n], records[n] and {k: records[n].get(k) for k in CATALOGUED}) for n in wrong[:2]]
        report["problems"].append(f"run(s) {wrong} ended in the run log but not so in the run catalog, e.g. {shown}")
    incomplete = sorted(n for n, r in ended.items() if r.get("result") in CLOSED and not complete(r))
    if incomplete:
        report["problems"].append(f"run(s) {incomplete} closed in the run log without every participant "
                                  f"({sorted(ORDERS)}), their end or their start: "
                                  f"{[ended[n] for n in incomplete[:2]]}")


CATALOGUED = {"result": None, "end": None, "participants": [], "problems": {}, "deferred": {}}   # and if not given


def complete(record):
    """Whether the run log's record of a run that was open names every participant, its end, its start if it ran."""
    number = (int, float)
    return sorted(record.get("participants") or []) == sorted(ORDERS) and isinstance(record.get("end"), number) \
        and (record["result"] not in ENDED or isinstance(record.get("start"), number))


def run_records(state):
    """Run number -> its latest record in the run log ({} when there is none)."""
    path = state / "runs.jsonl"
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else ():
        record = json.loads(line)
        records[record["run"]] = record
    return records


def judge_transitions(report, transitions, watch, folder, state):
    """No transition stuck: each the chaos asked answered in time and no longer under way once answered, no stage
    seen under way too long. DRAIN deferring ends, and the run numbers it was told at prepare never coming back."""
    problems = report["problems"]
    if watch.error is not None:
        problems.append(f"Watch failed: {watch.error!r}")
    report["transitions"] = (f"{len(transitions.took)} answered to the chaos, the longest in "
                             f"{max(transitions.took, default=0):.1f} s; {watch.seen} statuses with one under way, "
                             f"the longest seen at one stage {watch.longest_s:.1f} s")
    if transitions.stuck:
        problems.append(f"transition(s) asked by the chaos not answered within {ANSWER_WITHIN_S:g} s "
                        f"(+{WHOLE_WITHIN_S:g} s when the server or the run controller was hit): {transitions.stuck}")
    if transitions.not_over:
        problems.append(f"transition(s) still under way in the status once answered: {transitions.not_over[:5]}")
    if watch.stuck:
        problems.append(f"transition(s) seen at one stage longer than {STAGE_WITHIN_S:g} s (taking back: "
                        f"{TAKE_BACK_WITHIN_S:g} s): {list(watch.stuck.values())[:5]}")
    records = run_records(state)
    deferred = [n for n, r in records.items() if DRAIN in (r.get("deferred") or {})]
    lost = [n for n, r in records.items()
            if str((r.get("problems") or {}).get(DRAIN, "")).startswith("lost while deferring")]
    report["deferrals"] = f"{len(deferred)} runs' end held by {DRAIN}, {len(lost)} with it lost while deferring"
    if not deferred:
        problems.append(f"no run's end held by {DRAIN} in the run log: it never deferred")
    told = [number for number, _ in itertools.groupby(t["run"] for t in told_to_drain(folder)
                                                      if t["transition"] == "prepare" and not t["rejoin"])]
    if told != sorted(set(told)):
        problems.append(f"{DRAIN} told to prepare a run number again, or a lower one: {told}")


def judge_kills(report, killed, faults, folder, state):
    """DRAIN killed while it deferred a transition, at least once; each time dropped from it as lost: the transition
    not failed at DRAIN's stage (the run controller's log), an abort's record not naming DRAIN past its limit, lost
    or silent; unless the server or the run controller was hit from just before the kill to the transition's end
    (nobody may hear then that DRAIN's client is gone)."""
    records, problems = run_records(state), report["problems"]
    lines = (folder / "run.log").read_text(errors="replace").splitlines() if (folder / "run.log").exists() else []
    report["killed_deferring"] = []
    for held in killed:
        transition, run = held["transition"], held["run"]
        said = str((records.get(run, {}).get("problems") or {}).get(DRAIN, "nothing"))
        line = next((line for line in lines if logged_on(line) >= held["killed_on"] and
                     (failed_at(line, transition, run) >= held["stage"] or f"ing run {run}:" in line
                      or f"ed run {run}:" in line)), None)
        concluded = line.split(": ", 1)[-1] if line else "no conclusion logged"
        # from the kill to the conclusion (the limit when none was logged), in the faults' clock
        until = held["killed_at"] + (logged_on(line) - held["killed_on"] if line else DEFER_LIMIT_S + 5)
        report["killed_deferring"].append(f"{transition} of run {run} at stage {held['stage']} of {held['stages']}: "
                                          f"{concluded}; the run {records.get(run, {}).get('result', 'unlogged')}, "
                                          f"{DRAIN}: {said}")
        # DRAIN alone at its stage: a failure there is its own; an abort goes on past anything, named in the record
        held_up = failed_at(line or "", transition, run) == held["stage"] or \
            (transition == "abort_run" and said.startswith(("deferred past its limit", "lost (", "silent")))
        excused = any(name in ("server", "controller") and held["killed_at"] - 5 <= when <= until
                      for name, _, _, when in faults)
        if held_up and not excused:
            problems.append(f"{DRAIN}, SIGKILLed while it deferred {transition} of run {run}, was not dropped as "
                            f"lost: {concluded if transition != 'abort_run' else said}")
    if not killed:
        problems.append(f"{DRAIN} never killed while it deferred a transition")


def failed_at(line, transition, run):
    """The stage at which `transition` of `run` failed, when `line` of run.log says it did; else 0."""
    found = re.search(rf"{transition} of run {run} failed(?: at stage (\d+))?", line)
    return 0 if found is None else int(found[1] or 1)


def logged_on(line):
    """The time (epoch seconds) a line of run.log was logged; 0 when it has none."""
    try:
        return datetime.datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def told_to_drain(folder):
    """Every transition DRAIN was told (each of its processes), in order."""
    path = folder / "drain.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
