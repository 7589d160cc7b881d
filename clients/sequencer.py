"""The sequencer: a queue of sequences it takes step by step, driving the run controller as an operator would.

  python -m clients.sequencer --name sequencer [--folder sequences] [--state var/run/sequencer]

Sequences are JSON files (clients/sequences/schema.json) in `sequences/` beside
the experiment file, or given by path. Commands (to `sequencer`): `sequences`,
`load`, `queue`, `start`, `pause`, `resume`, `skip`, `abort`, `status`,
`dry_run`, `log`. Where the queue stands is on disk before each action
(clients/sequences/book.py); killed at any moment, a new sequencer goes on where
the last one was, and the run log holds each step's run once. It reaches the
run controller only through its commands, as any client may.
"""

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import experiments
from clients.sequences import book as B
from clients.sequences import report
from clients.sequences.alarms import ABORT, PAUSE, RETRY, AlarmRules
from clients.sequences.book import QueueBook
from clients.sequences.checks import dry_run
from clients.sequences.plan import Library, expand
from clients.sequences.runner import CONTROLLER, Runner, estimate_s
from runcontrol import logsetup, protocol
from runcontrol.client import Client, Refused, required
from runcontrol.control.conditions import Values
from runcontrol.errors import ConfigError

log = logging.getLogger("clients.sequencer")

TICK_S = 0.5               # how often the step in progress is looked at when nothing else wakes the sequencer
ASK_TIMEOUT_S = 60.0       # a request unanswered this long is given up (and the step looks again)
WHY_MAX = 500              # characters of an operator's reason
ALARMS_EVERY_S = 30.0      # how often the standing alarms are read again, beside their events

ACTIONS = {
    "sequences": "the sequences known (files of the sequences folder and those loaded)",
    "load": "check a sequence (sequence: a name or path): its steps, variables, estimate",
    "queue": "queue a sequence (sequence, variables, by)",
    "start": "start taking the queue",
    "pause": "pause after the current step, or at once (at_once: true ends the run in progress)",
    "resume": "go on after a pause (a step that failed is taken again)",
    "skip": "go past the current step (a run in progress ends)",
    "abort": "end the current sequence (a run in progress is aborted); the queue stops",
    "status": "the queue, the step in progress, its loop values, time spent and left",
    "dry_run": "check a sequence, or the whole queue, against the live experiment and estimate its time",
    "log": "the last entries of the sequencer's log (n)",
}


class Sequencer(Client):
    def __init__(self, name, folder, state, **kwargs):
        super().__init__(name, actions=ACTIONS, **kwargs)
        self.library = Library(folder)
        self.book = QueueBook(state)
        self.values = Values(time.time())
        self.alarms = AlarmRules()
        self.in_flight = None
        self._last_where = None
        self.runner = Runner(self.book, self._ask, self.values, self._emit, name)
        for entry in self.book.state["entries"]:   # what ran when the last sequencer died is looked at again
            if entry["state"] == B.RUNNING and entry["position"] and entry["position"]["phase"] == "running":
                self.book.advance(entry, "look")
        self.subscribe("pub.", self._on_published)
        self.subscribe("event.alarm_", self._on_alarm)
        self.subscribe("event.run_state", self._on_run_state)
        self.timers.every(TICK_S, self.advance)
        self.timers.every(ALARMS_EVERY_S, self._ask_alarms)   # an alarm event missed while away is learnt again

    # --- what the sequencer hears --------------------------------------------------------------

    def _on_registered(self, welcome, was_registered):
        super()._on_registered(welcome, was_registered)
        self.start({"cmd": "_retained", "prefix": ""}, on_answer=self._take_retained)
        self._ask_alarms()

    def _ask_alarms(self):
        if self.registered:
            self.start({"to": CONTROLLER, "cmd": "alarms"}, on_answer=self._take_alarms)

    def _take_retained(self, answer):
        if answer.ok and isinstance(answer.result, dict):
            for key, kept in answer.result.items():
                self.values.take(key, kept.get("data"), kept.get("ts") or time.time())

    def _take_alarms(self, answer):
        if answer.ok and isinstance(answer.result, dict) and isinstance(answer.result.get("alarms"), list):
            self.alarms.take_listing(answer.result["alarms"])

    def _on_published(self, topic, event):
        ts = event.get("ts")
        self.values.take(topic[len("pub."):], event.get("data"), ts if isinstance(ts, (int, float)) else time.time())

    def _on_run_state(self, topic, event):
        entry = self.book.current()
        position = entry and entry.get("position")
        if position and position["phase"] == "running" and event.get("run") == position["data"].get("run") \
                and event.get("state") not in ("RUN", "PAUSED"):
            self.runner.run_ended(entry)

    def _on_alarm(self, topic, event):
        raised = self.alarms.take_event(event)
        entry = self.book.current()
        if raised is None or entry is None or entry["state"] != B.RUNNING or not self.book.state["started"]:
            return
        position = entry["position"]
        step = self.book.steps(entry["id"])[position["index"]] if position["index"] < entry["steps"] else None
        policy = self.alarms.policy(entry, raised, step)
        why = f"alarm {raised}: {event.get('message', '')}".strip()
        log.warning("%s: %s (%s)", entry["sequence"], why, policy)
        if policy == PAUSE:
            self._pause_now(entry, why, "alarm")
        elif policy == RETRY and step is not None and step.kind == "run" and position["phase"] != "start":
            self.book.advance(entry, "look", alarm=raised)
        elif policy == ABORT:
            self.book.advance(entry, "look", cut="abort", why=why)

    # --- taking steps ---------------------------------------------------------------------------

    def advance(self):
        if self.in_flight is not None or not self.registered:
            return
        entry = self.book.current()
        if entry is None or not (self.book.state["started"] or self._cut_pending(entry)):
            self.runner.waiting = ""
            return
        in_step = entry["position"] is not None and entry["position"]["phase"] != "start"
        if self.book.state["paused"] and not in_step:   # a pause takes effect between steps
            self.runner.waiting = ""
            return
        if entry["position"] is None:
            entry["started_at"] = round(time.time(), 3)
            self.book.move(entry, 0)
            self._emit("sequence_started", entry=entry["id"], sequence=entry["sequence"],
                       message=f"Sequence {entry['sequence']} ({entry['id']}) started: {entry['steps']} steps")
        if entry["position"]["phase"] == "start":
            held = self.alarms.holding(entry)
            if held:
                self.runner.waiting = f"alarm(s) {', '.join(held)} to clear and be acknowledged"
                return
        self.runner.step(entry)

    @staticmethod
    def _cut_pending(entry):
        return bool(entry and entry.get("position") and entry["position"]["data"].get("cut"))

    def _ask(self, msg, then):
        """Send `msg`, call `then(answer)` when it comes; one request at a time, given up after ASK_TIMEOUT_S."""
        timeout = ASK_TIMEOUT_S + float(msg.get("timeout", 0))
        request = {}    # its Pending, and whether it is over (answered or given up)

        def answered(answer):
            if request.get("over"):
                return
            request["over"] = True
            self.in_flight = None
            guard.cancel()
            try:
                then(answer)
            finally:
                if self.in_flight is None and self._moved():   # else the next tick looks again: no busy loop
                    self.timers.after(0, self.advance)

        def given_up():
            if not request.get("over"):
                request["over"] = True
                self.abandon(request["pending"])
                self.in_flight = None
                log.warning("no answer to %s %s within %g s: looking again", msg.get("to"), msg["cmd"], timeout)
        guard = self.timers.after(timeout, given_up)
        request["pending"] = self.start(msg, on_answer=answered)
        if not request.get("over"):   # an answer may come at once (no server to send it to)
            self.in_flight = request["pending"]

    def _moved(self):
        """Whether the queue's position changed since the last look (a step done, begun or cut)."""
        entry = self.book.current()
        where = entry and entry.get("position") and (entry["id"], entry["position"]["index"],
                                                      entry["position"]["phase"])
        moved, self._last_where = where != self._last_where, where
        return moved

    def _emit(self, kind, **fields):
        self.send(None, "_event", kind=kind, **fields)

    def _pause_now(self, entry, why, by):
        """Pause at once: a run in progress ends, and the step is taken again after `resume`."""
        position = entry.get("position")
        step_kind = self.book.steps(entry["id"])[position["index"]].kind \
            if position and position["index"] < entry["steps"] else None
        if step_kind == "run" and position["phase"] != "start":
            self.book.pause(why, by, at_once=True, entry=entry, cut="retake")
            entry["position"]["phase"] = "look"
            self.book.save()
        else:
            self.book.pause(why, by, at_once=True)
        self._emit("sequence_paused", entry=entry["id"], sequence=entry["sequence"], why=why, by=by,
                   message=f"{entry['sequence']} paused by {by}: {why}")

    # --- commands -------------------------------------------------------------------------------

    def cmd_sequences(self, msg):
        return {"folder": str(self.library.folder), "sequences": self.library.names()}

    def cmd_load(self, msg):
        sequence = self._sequence(msg)
        steps = self._expand(sequence, msg)
        return {"name": sequence.name, "description": sequence.description, "variables": sequence.variables,
                "steps": len(steps), "estimate_s": round(sum(estimate_s(s) for s in steps), 1)}

    def cmd_queue(self, msg):
        sequence = self._sequence(msg)
        steps = self._expand(sequence, msg)
        reply = self.defer(msg)

        def checked(verdict):
            if verdict["problems"]:
                listing = "\n".join(f"  - {p}" for p in verdict["problems"])
                return reply.refuse(f"sequence {sequence.name} does not fit the experiment, nothing queued: "
                                    f"{len(verdict['problems'])} problem(s):\n{listing}", protocol.BAD_FIELD)
            entry = self.book.add(sequence.name, msg.get("variables") or {}, steps, self._by(msg), sequence.on_alarm)
            self._emit("sequence_queued", entry=entry["id"], sequence=sequence.name, steps=len(steps),
                       by=entry["by"], message=f"Queued {sequence.name} ({entry['id']}, {len(steps)} steps)")
            reply.resolve(report.entry_summary(entry))
        self._against_experiment([(sequence.name, steps)], checked, hard_only=True)
        return reply

    def cmd_start(self, msg):
        if self.book.state["paused"]:
            raise Refused("the queue is paused: resume it", protocol.BAD_STATE)
        if not any(e["state"] not in B.FINISHED for e in self.book.state["entries"]):
            raise Refused("nothing is queued: queue a sequence first", protocol.BAD_STATE)
        self.book.start(self._by(msg))
        self.timers.after(0, self.advance)
        return self.status()

    def cmd_pause(self, msg):
        why = self._why(msg, "paused by an operator")
        if not isinstance(msg.get("at_once", False), bool):
            raise Refused(f"'at_once': {msg['at_once']!r} must be true or false", protocol.BAD_FIELD)
        entry = self._running_entry("pause")
        paused = self.book.state["paused"]
        if paused and (paused["at_once"] or not msg.get("at_once")):
            raise Refused(f"already paused: {paused['why']}", protocol.BAD_STATE)
        if msg.get("at_once"):
            self._pause_now(entry, why, self._by(msg))
        else:
            self.book.pause(why, self._by(msg))
            self._emit("sequence_paused", entry=entry["id"], sequence=entry["sequence"], why=why, by=self._by(msg),
                       message=f"{entry['sequence']} will pause after its step: {why}")
        return self.status()

    def cmd_resume(self, msg):
        if not self.book.state["paused"]:
            raise Refused("the queue is not paused", protocol.BAD_STATE)
        self.book.resume(self._by(msg))
        entry = self.book.current()
        self._emit("sequence_resumed", entry=entry and entry["id"], sequence=entry and entry["sequence"],
                   by=self._by(msg), message=f"Sequences resumed by {self._by(msg)}")
        self.timers.after(0, self.advance)
        return self.status()

    def cmd_skip(self, msg):
        entry = self._running_entry("skip")
        self.book.advance(entry, "look", cut="skip")
        self._emit("sequence_skipped", entry=entry["id"], sequence=entry["sequence"], index=entry["position"]["index"],
                   by=self._by(msg), message=f"{entry['sequence']}: step {entry['position']['index'] + 1} skipped")
        self.timers.after(0, self.advance)
        return self.status()

    def cmd_abort(self, msg):
        why = self._why(msg, f"aborted by {self._by(msg)}")
        entry = self._running_entry("abort")
        if entry["position"] is None:
            self.book.move(entry, 0)
        self.book.advance(entry, "look", cut="abort", why=why)
        self.timers.after(0, self.advance)
        return self.status()

    def cmd_status(self, msg):
        return self.status()

    def cmd_log(self, msg):
        n = msg.get("n", 50)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise Refused(f"'n': {n!r} must be a whole number >= 0", protocol.BAD_FIELD)
        return self.book.log(n)

    def cmd_dry_run(self, msg):
        if msg.get("sequence") is not None:
            sequence = self._sequence(msg)
            queued = [(sequence.name, self._expand(sequence, msg))]
        else:
            queued = [(e["sequence"], self.book.steps(e["id"])) for e in self.book.state["entries"]
                      if e["state"] not in B.FINISHED]
        reply = self.defer(msg)
        self._against_experiment(queued, reply.resolve)
        return reply

    def _against_experiment(self, queued, then, hard_only=False):
        """`then(verdict)` once the run controller has said what the experiment holds (checks.dry_run)."""
        answers = {}

        def took(key):
            def answered(answer):
                answers[key] = answer
                if len(answers) == 2:
                    then(dry_run(queued, answers["status"], answers["config"], self.values, hard_only))
            return answered
        self.start({"to": CONTROLLER, "cmd": "status"}, on_answer=took("status"))
        self.start({"to": CONTROLLER, "cmd": "config"}, on_answer=took("config"))

    # --- helpers of the commands ------------------------------------------------------------------

    def _sequence(self, msg):
        name = required(msg, "sequence")
        if not isinstance(name, str) or not name:
            raise Refused("'sequence' must be a sequence's name or a path", protocol.BAD_FIELD)
        try:
            return self.library.get(name)
        except ConfigError as exc:
            raise Refused(str(exc), protocol.BAD_FIELD) from None

    def _expand(self, sequence, msg):
        given = msg.get("variables") or {}
        if not isinstance(given, dict):
            raise Refused("'variables' must be an object: {name: value}", protocol.BAD_FIELD)
        try:
            steps = expand(sequence, self.library, given)
        except ConfigError as exc:
            raise Refused(str(exc), protocol.BAD_FIELD) from None
        if not steps:
            raise Refused(f"sequence {sequence.name} has no step to take", protocol.BAD_FIELD)
        return steps

    def _running_entry(self, what):
        entry = self.book.current()
        if entry is None or (entry["state"] != B.RUNNING and not self.book.state["started"]):
            raise Refused(f"no sequence is being taken: nothing to {what}", protocol.BAD_STATE)
        return entry

    @staticmethod
    def _why(msg, default):
        """The reason an operator gave (`why`: text of at most WHY_MAX characters), or `default`."""
        why = msg.get("why")
        if why is None or why == "":
            return default
        if not isinstance(why, str) or len(why) > WHY_MAX:
            raise Refused(f"'why' must be text of at most {WHY_MAX} characters", protocol.BAD_FIELD)
        return why

    @staticmethod
    def _by(msg):
        by = msg.get("by") or msg.get("from") or "someone"
        return str(by)[:protocol.BY_MAX]

    def status(self):
        return report.status(self.book, self.runner.waiting)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.sequencer", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=os.environ.get("ORBIT_NAME", "sequencer"))
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    parser.add_argument("--server", default=None)
    parser.add_argument("--folder", help="where sequence files are (default: sequences/ beside the experiment file)")
    parser.add_argument("--state", help="where the queue is kept (default: <paths.state>/sequencer)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logsetup.configure("DEBUG" if args.verbose else "INFO", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        spec = experiments.load(args.experiment) if args.experiment else None
        folder = Path(args.folder) if args.folder else (spec.path.parent / "sequences" if spec else Path("sequences"))
        state = Path(args.state) if args.state else (spec.paths.state if spec else Path("var/run")) / "sequencer"
        sequencer = Sequencer(args.name, folder, state, experiment=args.experiment, server=args.server)
    except (ConfigError, B.BookError) as exc:
        print(f"sequencer: {exc}", file=sys.stderr)
        return 2
    try:
        sequencer.run_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sequencer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
