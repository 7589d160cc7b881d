"""Taking the queue's steps one after the other, so that no crash loses or repeats one.

Owns what each kind of step does and in which phases, and what it does when it
finds itself in a phase after a crash. Where the queue stands is on disk (the
book) before each request goes out; a request's outcome that is not known (the
sequencer died before the answer) is found out from the run controller, never
guessed:

- `run`: in phase `look` it asks the run controller's `status` and `runs` and
  decides: a run of this step (its tag in the run log) that ended is the step
  done; one that runs is waited for (phase `running`); READY for this step is a
  `begin_run`; STOP is a `prepare_run`. Both carry the step's tag, so the run log
  says which step of which sequence each run was taken for. Someone else's run is
  waited out.
- `set`: `set_config` with `by` and an id naming the step; after a crash, the
  settings log says whether it was applied, and sent again with the same id, one
  still being applied is answered once (the client library's exactly-once).
- `command`: sent with an id made of the step's tag: sent again after a crash, it
  is answered from the receiver's memory, not run twice.
- `wait`: a condition on a published number, held for `for` seconds, with a
  `timeout` and what to do then (`on_timeout`: fail, skip, pause).
- `pause`: the queue pauses with a message; resumed, the next step follows.

A step that fails pauses the queue with the reason: `resume` takes it again,
`skip` goes past it, `abort` ends the sequence. `cut` (an operator's skip,
abort or pause at once, or an alarm) ends a run in progress before it applies.
Must not block: every request is answered through `ask(msg, then)`.
"""

import logging
import time

from clients.sequences import book as B
from runcontrol import protocol

log = logging.getLogger("clients.sequencer")

CONTROLLER = "run"
RUN, READY, STOP, PAUSED = "RUN", "READY", "STOP", "PAUSED"
IN_RUN = (RUN, PAUSED)   # a paused run is still this step's run
RECENT_RUNS = 50         # runs read back to find this step's own
IMAGES_EVERY_S = 2.0     # how often a reader is asked for its images during a run step that counts them


def unanswered(answer):
    """No usable answer came (the receiver or the server was away, or it took too long): ask again, never a failure."""
    return answer.from_server or answer.code in protocol.LOCAL_CODES


def absent(status):
    """The participants of the run controller not registered now (restarting after a crash, say)."""
    registered = {p.get("client") for p in status.get("programs", {}).values() if p.get("registered")}
    registered |= set(status.get("clients") or [])
    return [name for name in status.get("participants", []) if name not in registered]


def only_absent(why):
    """Whether a failed transition's reason names only participants that were away (silent or lost), none that
    refused (the run controller's text: "<name> silent (...)", "<name> lost (...)", "<name> refused: ...")."""
    why = str(why)
    return " refused: " not in why and (" silent (" in why or " lost (" in why)


def tag_of(book, entry, step, attempt):
    return {"id": f"{book.state['token']}:{entry['id']}:{step.index}:{attempt}", "sequence": entry["sequence"],
            "entry": entry["id"], "step": step.index, "where": step.where, "loop": step.loop}


def holds(spec, value):
    """Whether a `wait` or `until` condition holds for `value` (None: not known yet: it does not)."""
    if value is None:
        return False
    if "above" in spec and not value > spec["above"]:
        return False
    if "below" in spec and not value < spec["below"]:
        return False
    if "band" in spec and not spec["band"][0] <= value <= spec["band"][1]:
        return False
    if "near" in spec and not abs(value - spec["near"]) <= spec.get("within", 0.0):
        return False
    return True


class Runner:
    """Takes the current entry's steps. `ask(msg, then)` sends a request and calls `then(answer)`; `values`
    (conditions.Values) holds the published numbers; `emit(kind, **fields)` sends an event; `name` is the
    sequencer's client name (in every `by`)."""

    def __init__(self, book, ask, values, emit, name, clock=time.time):
        self.book, self.ask, self.values, self.emit, self.name, self.clock = book, ask, values, emit, name, clock
        self.waiting = ""          # what the step in progress waits for, in words
        self.held_since = None     # since when a wait's condition holds
        self.images = None         # a run step's images so far, from its reader
        self._images_asked = 0.0

    # --- the step in progress ---------------------------------------------------------------

    def step(self, entry):
        """Take the next action of `entry`'s step in progress (its position is on disk)."""
        position = entry["position"]
        steps = self.book.steps(entry["id"])
        if position["index"] >= len(steps):
            self.book.finish(entry, B.DONE)
            self.emit("sequence_done", entry=entry["id"], sequence=entry["sequence"],
                      message=f"Sequence {entry['sequence']} ({entry['id']}) done: {len(steps)} steps")
            return
        step = steps[position["index"]]
        data = position["data"]
        if position["phase"] == "start":
            self._announce(entry, step)
            self.book.advance(entry, "look")
        getattr(self, f"_{step.kind}")(entry, step, position, data)

    def _announce(self, entry, step):
        self.held_since, self.images = None, None
        self.book.note("step", entry=entry["id"], index=step.index, kind=step.kind, where=step.where, loop=step.loop)
        loop = ", ".join(f"{k}={v}" for k, v in step.loop.items())
        self.emit("sequence_step", entry=entry["id"], sequence=entry["sequence"], index=step.index, action=step.kind,
                  where=step.where, loop=step.loop,
                  message=f"{entry['sequence']} step {step.index + 1}/{entry['steps']}: {step.kind}"
                          + (f" ({loop})" if loop else ""))

    def done(self, entry, step, **what):
        self.book.note("step_done", entry=entry["id"], index=step.index, **what)
        self.book.move(entry, step.index + 1)

    def retake(self, entry, step, data):
        """The step again from the start, a new attempt (a new tag: a new run)."""
        self.book.move(entry, step.index, attempt=data.get("attempt", 1) + 1)

    def fail(self, entry, step, data, why):
        """The step failed: the queue pauses with the reason; resumed, the step is taken again."""
        log.warning("%s step %d (%s) failed: %s", entry["sequence"], step.index + 1, step.where, why)
        self.book.move(entry, step.index, attempt=data.get("attempt", 1) + 1)
        self.book.pause(f"step {step.index + 1} ({step.kind}) failed: {why}", self.name)
        self.emit("sequence_paused", entry=entry["id"], sequence=entry["sequence"], index=step.index, why=why,
                  message=f"{entry['sequence']} paused: step {step.index + 1} failed: {why}")

    def apply_cut(self, entry, step, data):
        """An operator's skip or abort, or a retake, once nothing of the step runs any more."""
        cut = data.get("cut")
        if cut == "skip":
            self.done(entry, step, skipped=True)
        elif cut == "abort":
            self.book.finish(entry, B.ABORTED, data.get("why"))
            self.book.stop(self.name)
            self.emit("sequence_aborted", entry=entry["id"], sequence=entry["sequence"], why=data.get("why"),
                      message=f"Sequence {entry['sequence']} ({entry['id']}) aborted: {data.get('why')}")
        else:   # "retake": a pause at once, an alarm
            self.retake(entry, step, data)

    # --- run ---------------------------------------------------------------------------------

    def _run(self, entry, step, position, data):
        if position["phase"] == "running":
            self._watch_run(entry, step, data)
            return
        self.waiting = "the run controller's state"
        self.ask({"to": CONTROLLER, "cmd": "status"},
                 lambda status: status.ok and self.ask({"to": CONTROLLER, "cmd": "runs", "n": RECENT_RUNS},
                                                       lambda runs: runs.ok and self._decide(entry, step, data,
                                                                                             status.result,
                                                                                             runs.result)))

    def _decide(self, entry, step, data, status, runs):
        tag = tag_of(self.book, entry, step, data.get("attempt", 1))
        mine = [r for r in runs if isinstance(r, dict) and (r.get("sequence") or {}).get("id") == tag["id"]]
        ended = [r for r in mine if r.get("result") != "running"]
        state, current = status.get("state"), status.get("current_run") or {}
        current_id = str((current.get("sequence") or {}).get("id"))
        ours = current_id.rsplit(":", 1)[0] == tag["id"].rsplit(":", 1)[0]   # this step's, of any attempt
        if ours and current_id != tag["id"] and state in IN_RUN:   # begun by an earlier attempt: that attempt it is
            data["attempt"] = int(current_id.rsplit(":", 1)[1])
        if ended:
            record = ended[-1]
            if data.get("cut"):
                self.apply_cut(entry, step, data)
            elif record.get("result") == "failed" and only_absent(record.get("why")):
                self.retake(entry, step, data)   # a participant was away (restarting): take the step again
            elif record.get("result") == "failed":
                self.fail(entry, step, data, record.get("why") or "the run failed")
            elif data.get("alarm"):   # ended because of an alarm that asks for the step again
                self.retake(entry, step, data)
            else:
                self.done(entry, step, run=record.get("run"), result=record.get("result"))
        elif state in IN_RUN and ours:
            if data.get("cut") or data.get("alarm"):
                cmd = "abort_run" if data.get("cut") == "abort" or data.get("alarm") else "end_run"
                self._end(entry, data, cmd, tag)
            else:
                self.book.advance(entry, "running", run=current.get("run"), begun=current.get("start"))
                self.emit("sequence_run", entry=entry["id"], sequence=entry["sequence"], index=step.index,
                          run=current.get("run"), message=f"{entry['sequence']} step {step.index + 1}: run "
                                                          f"{current.get('run')}")
        elif state == READY and ours:
            if data.get("cut") or data.get("alarm"):
                self._end(entry, data, "abort_run", tag)
            elif absent(status):
                self.waiting = f"participant(s) {', '.join(absent(status))} to register"
            else:
                self._begin(entry, step, data, tag)
        elif data.get("cut"):
            self.apply_cut(entry, step, data)
        elif state in (*IN_RUN, READY):
            self.waiting = f"run {current.get('run')} ({state}, not this sequence's) to end"
        elif state == STOP and absent(status):
            self.waiting = f"participant(s) {', '.join(absent(status))} to register"
        elif state == STOP:
            self._prepare(entry, step, data, tag)

    def _prepare(self, entry, step, data, tag):
        self.waiting = "prepare_run"
        self.ask({"to": CONTROLLER, "cmd": "prepare_run", "by": self.name, "sequence": tag,
                  "timeout": step.spec.get("timeout", 10)},
                 lambda answer: answer.ok or self._refused(entry, step, data, "prepare_run", answer))

    def _begin(self, entry, step, data, tag):
        self.waiting = "begin_run"
        self.ask({"to": CONTROLLER, "cmd": "begin_run", "by": self.name, "sequence": tag,
                  "comment": step.spec.get("comment", f"{entry['sequence']} step {step.index + 1}"),
                  "params": {**step.spec.get("params", {}), "sequence": entry["sequence"], "step": step.index,
                             **step.loop}, "timeout": step.spec.get("timeout", 10)},
                 lambda answer: answer.ok or self._refused(entry, step, data, "begin_run", answer))

    def _end(self, entry, data, cmd, tag):
        self.waiting = cmd
        self.ask({"to": CONTROLLER, "cmd": cmd, "by": self.name, "sequence": tag},
                 lambda answer: None)   # what came of it is looked at next

    def _refused(self, entry, step, data, cmd, answer):
        if unanswered(answer) or answer.code in (protocol.BUSY, protocol.BAD_STATE):   # look again
            return
        if answer.code == protocol.FAILED and only_absent(answer.error):
            return   # a participant was away: looked at again (a failed prepare is retaken, READY begun) once back
        self.fail(entry, step, data, f"{cmd}: {answer.error}")

    def _watch_run(self, entry, step, data):
        spec, now = step.spec, self.clock()
        begun = data.get("begun") or now
        reasons = []
        if "seconds" in spec:
            left = begun + spec["seconds"] - now
            reasons.append(f"{max(0.0, left):.0f} s left")
            if left <= 0:
                return self._end_of_run(entry, step, data, f"{spec['seconds']:g} s")
        if "until" in spec:
            until = spec["until"]
            if self._held(until, now):
                return self._end_of_run(entry, step, data, f"{until['value']} reached")
            reasons.append(f"{until['value']} = {self.values.value(until['value'])}")
        if "images" in spec:
            wanted = spec["images"]
            if self.images is not None and self.images >= wanted["count"]:
                return self._end_of_run(entry, step, data, f"{self.images} images")
            if now - self._images_asked >= IMAGES_EVERY_S:
                self._images_asked = now
                self.ask({"to": wanted["reader"], "cmd": "status"}, lambda answer: self._count_images(answer, data))
            reasons.append(f"{self.images or 0}/{wanted['count']} images")
        self.waiting = f"run {data.get('run')}: " + ", ".join(reasons or ["ends when an operator says"])

    def _count_images(self, answer, data):
        run = answer.result.get("run") if answer.ok and isinstance(answer.result, dict) else None
        if isinstance(run, dict) and run.get("run") == data.get("run"):
            self.images = run.get("acquisitions", 0)

    def _end_of_run(self, entry, step, data, why):
        self.book.advance(entry, "look", ending=why)
        self._end(entry, data, "end_run", tag_of(self.book, entry, step, data.get("attempt", 1)))

    def run_ended(self, entry):
        """The run controller says the step's run ended (or changed): look at it again."""
        if entry["position"]["phase"] == "running":
            self.book.advance(entry, "look")

    # --- set, command, wait, pause -----------------------------------------------------------

    def _set(self, entry, step, position, data):
        by = f"{self.name}:{tag_of(self.book, entry, step, data.get('attempt', 1))['id']}"[:64]
        program = step.spec["program"]
        if data.get("cut"):
            return self.apply_cut(entry, step, data)
        if not data.get("sent"):
            self.book.advance(entry, "look", sent=True)
            return self._apply(entry, step, data, by)
        self.waiting = f"the settings log of {program}"   # sent before a crash: was it applied?
        self.ask({"to": CONTROLLER, "cmd": "config_log", "program": program, "n": 1000},
                 lambda answer: answer.ok and (self.done(entry, step, applied="before") if any(
                     e.get("by") == by and e.get("accepted") for e in answer.result) else
                     self._apply(entry, step, data, by)))

    def _apply(self, entry, step, data, by):
        program = step.spec["program"]
        self.waiting = f"{program} to accept {step.spec['values']}"
        # the same id when sent again: one still being applied is answered once, from the run controller's memory
        self.ask({"to": CONTROLLER, "cmd": "set_config", "program": program, "values": step.spec["values"], "by": by,
                  "id": by},
                 lambda answer: self._step_answered(entry, step, data, answer, f"set_config {program}"))

    def _command(self, entry, step, position, data):
        spec = step.spec
        if data.get("cut"):
            return self.apply_cut(entry, step, data)
        request_id = f"{self.name}:{tag_of(self.book, entry, step, data.get('attempt', 1))['id']}"
        if not data.get("sent"):
            self.book.advance(entry, "look", sent=True)
        self.waiting = f"{spec['to']} to answer {spec['cmd']}"
        self.ask({**spec.get("args", {}), "to": spec["to"], "cmd": spec["cmd"], "id": request_id},
                 lambda answer: self._step_answered(entry, step, data, answer, f"{spec['to']} {spec['cmd']}"))

    def _step_answered(self, entry, step, data, answer, what):
        """A set's or a command's answer: done, failed, or (nothing usable came) asked again at the next look."""
        if answer.ok:
            self.done(entry, step, result=answer.result)
        elif unanswered(answer) or answer.code in (protocol.NOT_REGISTERED, protocol.NO_SETTINGS, protocol.BUSY):
            self.waiting = f"{what}: {answer.error}"   # the program is away or restarting: asked again
        else:
            self.fail(entry, step, data, f"{what}: {answer.error}")

    def _wait(self, entry, step, position, data):
        spec, now = step.spec, self.clock()
        if data.get("cut"):
            return self.apply_cut(entry, step, data)
        if "since" not in data:
            self.book.advance(entry, "look", since=now)
        if self._held(spec, now):
            return self.done(entry, step, value=self.values.value(spec["value"]))
        if "timeout" in spec and now - data["since"] >= spec["timeout"]:
            why = f"{spec['value']} did not reach its condition within {spec['timeout']:g} s " \
                  f"(last: {self.values.value(spec['value'])})"
            action = spec.get("on_timeout", "fail")
            if action == "skip":
                return self.done(entry, step, skipped=True, why=why)
            if action == "pause":
                self.book.move(entry, step.index, attempt=data.get("attempt", 1) + 1)
                self.book.pause(why, self.name)
                return self.emit("sequence_paused", entry=entry["id"], sequence=entry["sequence"],
                                 index=step.index, why=why, message=f"{entry['sequence']} paused: {why}")
            return self.fail(entry, step, data, why)
        self.waiting = f"{spec['value']} = {self.values.value(spec['value'])}"

    def _held(self, spec, now):
        if not holds(spec, self.values.value(spec["value"])):
            self.held_since = None
            return False
        self.held_since = self.held_since or now
        return now - self.held_since >= spec.get("for", 0)

    def _pause(self, entry, step, position, data):
        if data.get("cut"):
            return self.apply_cut(entry, step, data)
        if data.get("paused"):   # resumed since: the next step
            return self.done(entry, step)
        message = step.spec.get("message", "paused by the sequence")
        self.book.pause(message, entry["sequence"], entry=entry, paused=True)
        self.emit("sequence_paused", entry=entry["id"], sequence=entry["sequence"], index=step.index, why=message,
                  message=f"{entry['sequence']} paused: {message}")


def estimate_s(step):
    """A step's expected duration in seconds, for the queue's estimate (a run without `seconds`: its `estimate`)."""
    spec = step.spec
    if step.kind == "run":
        return float(spec.get("seconds", spec.get("estimate", 0))) + 2.0
    if step.kind == "wait":
        return float(spec.get("for", 0))
    return 0.5 if step.kind in ("set", "command") else 0.0


def wanted_values(step):
    """The published numbers a step needs."""
    spec = step.spec
    if step.kind == "wait":
        return [spec["value"]]
    if step.kind == "run" and "until" in spec:
        return [spec["until"]["value"]]
    return []

