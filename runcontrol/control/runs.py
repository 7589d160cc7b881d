"""Run transitions: STOP -> READY -> RUN (<-> PAUSED) -> STOP, driven through every participant.

Owns the work of the run commands (`prepare_run`, `begin_run`, `pause_run`,
`resume_run`, `end_run`, `abort_run`, `exclude`, `include`, `runs`; their
payloads are checked by `commands/`): checking the state, asking the
participants stage by stage (`stages.py`) and concluding (state entered and
logged in the run book, `run_state` event) or refusing with the name of each
participant that refused, stayed silent or deferred too long; showing who holds
a transition (`run_progress` events, the status); leaving participants out of
runs; and telling a participant that (re)joins during a run where the run is.
Must not spawn processes.
"""

import logging
import time

from runcontrol import protocol
from runcontrol.control import runbook
from experiments import Participation
from runcontrol.control.stages import StagedTransition
from runcontrol.errors import Refused

log = logging.getLogger("runcontrol.controller")

TRANSITION_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0   # how long a stop of the experiment waits for the participants to end the run
MAX_TRANSITION_TIMEOUT_S = 600.0   # the most a request's `timeout` may ask for (commands/ checks it)
PROGRESS_EVENT_EVERY_S = 1.0       # a participant's progress goes out as an event at most this often (the event log keeps them)
WORDS = {"prepare_run": "Prepared run", "begin_run": "Beginning run", "pause_run": "Paused run",
         "resume_run": "Resumed run", "end_run": "Ending run", "abort_run": "Aborted run"}


TAGS = ("by", "sequence")   # what a run carries of who asked for it, into every record of the run log

class RunDesk:
    def __init__(self, client, supervisor, book, waiters, window=500):
        """`window`: the most transition requests awaiting answers at once (half the server's `max_pending`)."""
        self.window = window
        self.client = client
        self.supervisor = supervisor
        self.book = book
        self.waiters = waiters
        self.run_clients = {}      # clients that said meta.participant (or meta.run) in their _hello: their order
        self.pids = {}             # client -> the pid it registered with
        self.busy = None
        self.staged = None         # the StagedTransition under way
        self._progress_sent = {}   # name -> when its last run_progress event went out
        self.begin_hooks = []      # each called with the run number as it begins: fields for its record
        self.end_hooks = []        # each called with the run number once its outcome (ended, failed) is in the run log

    def records(self, n):
        """The latest record of each of the last `n` runs, newest last."""
        return self.book.records()[-n:] if n else []

    def participations(self):
        """Who takes part in the next transition (name -> Participation): the programs marked participant and the
        clients that said so, without those left out."""
        taking = {p.spec.client: p.spec.participation for p in self.supervisor.programs.values()
                  if p.spec.participant and p.spec.client and not p.retired}
        for name, order in self.run_clients.items():
            taking.setdefault(name, Participation(order=order))
        return {name: part for name, part in taking.items() if name not in self.book.excluded}

    def participants(self):
        return sorted(self.participations())

    def client_joined(self, name, meta, pid=None):
        """`name` registered (`pid`: its process, when the server's event says; a new one replaced the old)."""
        if pid is not None:
            if self.pids.get(name) not in (None, pid):
                self.client_gone(name, f"a new process (pid {pid}) registered under its name")
            self.pids[name] = pid
        if isinstance(meta, dict) and (meta.get("participant") is True or meta.get("run") is True):
            order = meta.get("order")
            self.run_clients[name] = order if type(order) is int and 1 <= order <= 1000 else Participation.order

    def client_left(self, name):
        self.run_clients.pop(name, None)
        self.client_gone(name, "its client left")

    def client_gone(self, name, why):
        """A participant's client is gone (lost, left, or replaced by a new process): it holds no transition."""
        if self.staged is not None:
            self.staged.lost(name, why)

    def holding(self):
        """The transition under way, for the status: its name, the run, the stage and who holds it (None: none)."""
        if self.staged is None:
            return None
        return {"transition": self.busy, "run": self.staged.ask["run"], **self.staged.status()}

    # --- leaving participants out -------------------------------------------------------------------

    def exclude(self, name, why, by, stop):
        """Leave `name` (a participant's client) out of the runs prepared from now on; its program is stopped too
        when `stop` (the caller stops it)."""
        if self.busy:
            raise Refused(f"{self.busy} is in progress; try again when it has answered", protocol.BUSY)
        if self.book.state != runbook.STOP:
            raise Refused(f"exclude needs state STOP (it applies from the next prepare_run); the state is "
                          f"{self.book.state}", protocol.BAD_STATE)
        known = {p.spec.client for p in self.supervisor.programs.values() if p.spec.participant and p.spec.client}
        if name not in known | set(self.run_clients) | set(self.book.excluded):
            raise Refused(f"{name!r} is not a participant of runs: "
                          f"{', '.join(sorted(known | set(self.run_clients))) or 'there is none'}",
                          protocol.NO_SUCH_CLIENT)
        self.book.exclude(name, why=why, by=by, at=round(time.time(), 3), stopped=bool(stop))
        log.warning("%s left out of the next runs by %s: %s", name, by, why or "no reason given")
        return {"excluded": dict(self.book.excluded)}

    def include(self, name, by):
        """Take `name` part again from the next prepare_run; what excluding it said (its `stopped`: start it)."""
        if self.busy:
            raise Refused(f"{self.busy} is in progress; try again when it has answered", protocol.BUSY)
        if self.book.state != runbook.STOP:
            raise Refused(f"include needs state STOP (it applies from the next prepare_run); the state is "
                          f"{self.book.state}", protocol.BAD_STATE)
        said = self.book.include(name)
        if said is None:
            raise Refused(f"{name!r} is not left out of runs; left out: "
                          f"{', '.join(sorted(self.book.excluded)) or 'none'}", protocol.NO_SUCH_CLIENT)
        log.info("%s takes part in runs again (by %s)", name, by)
        return said

    # --- one transition ---------------------------------------------------------------------

    def end_for_shutdown(self, why, signal=None):
        """The experiment is being stopped (`signal`: what stopped it, for the record): an open run ends first
        (participants told `end` with `why`, the record saying so). Returns an Outcome to wait on, or None when no
        run is open."""
        return self.end_because(why, "ended by shutdown", (runbook.READY, *runbook.IN_RUN), SHUTDOWN_TIMEOUT_S,
                                defer_cap_s=SHUTDOWN_TIMEOUT_S, signal=signal)

    def end_because(self, why, result, states=runbook.IN_RUN, timeout=TRANSITION_TIMEOUT_S, defer_cap_s=None,
                    **cause):
        """End the run in one of `states` whatever the participants answer, `why` told to them and logged in
        the record with `result` and `cause` (alarm=NAME, signal=TEXT: what ended it). An Outcome to wait on, or
        None when there is no such run or one is changing."""
        if self.book.state not in states or self.busy:
            return None
        outcome = Outcome()
        self.transition({"timeout": timeout, "from": self.client.name}, "abort_run", outcome, why, result, cause,
                        defer_cap_s)
        return outcome

    def suspend_because(self, why, alarm, resume=False):
        """Pause the run (`resume`: resume the paused one) because of `alarm`; an Outcome, or None when the state
        does not allow it or a transition is under way."""
        action = "resume_run" if resume else "pause_run"
        if self.book.state not in runbook.ALLOWED_FROM[action] or self.busy:
            return None
        outcome = Outcome()
        self.transition({"timeout": TRANSITION_TIMEOUT_S, "from": self.client.name, "why": why}, action, outcome,
                        cause={"alarm": alarm})
        return outcome

    def transition(self, msg, action, reply=None, why=None, result=None, cause=None, defer_cap_s=None):
        """Start `action` (a run command) asked by `msg`: the answer comes when every stage has answered (or the
        first that refused, and its take-backs); `reply` (default: a deferred answer to `msg`) takes it. Refused at
        once when another transition is under way or the state does not allow it."""
        self._check(action)
        timeout = msg.get("timeout", TRANSITION_TIMEOUT_S)
        why = why or msg.get("why")
        fields = self._run_fields(msg, action, cause or {})
        if action == "prepare_run":
            fields["run"] = self.book.next_number()  # on disk before any participant hears of it
            if self.book.excluded:
                fields["excluded"] = dict(self.book.excluded)
        participations = self.participations()
        ask = protocol.make_transition(runbook.WIRE[action], fields["run"], comment=fields.get("comment"),
                                       params=fields.get("params"), abort=action == "abort_run" and not why,
                                       reason=why)
        self.busy = action
        reply = reply or self.client.defer(msg)
        log.info("%s: run %s, asking %s, answers within %g s", action, fields["run"],
                 ", ".join(sorted(participations)) or "no participant", timeout)

        def done(staged):
            self.busy, self.staged = None, None
            self._conclude(reply, action, fields, staged, why, result, cause or {})
        self.staged = StagedTransition(self.client, self.waiters, ask, participations, action in runbook.UP, timeout,
                                       action != "abort_run", lambda staged, name: self._progressed(reply, staged, name),
                                       done, self.window, paused=self.book.state == runbook.PAUSED,
                                       defer_cap_s=defer_cap_s)
        self.staged.start()
        return reply

    def _progressed(self, reply, staged, name):
        """A participant defers with progress: the requester hears of it, and so does everyone (not too often)."""
        holding = self.holding()
        if holding is None:
            return
        reply.progress(**holding)
        if name is None:   # a stage or a take-back begins: the requester knows it goes on
            return
        now = time.monotonic()
        if now - self._progress_sent.get(name, 0.0) >= PROGRESS_EVENT_EVERY_S:
            self._progress_sent[name] = now
            held = staged.holders[name]
            share = f" {held['fraction']:.0%}" if held["fraction"] is not None else ""
            self.client.send(None, "_event", kind="run_progress", **holding,
                             message=f"{holding['transition']} of run {holding['run']} held by {name}{share}"
                                     f"{': ' + held['text'] if held['text'] else ''}")

    def _check(self, action):
        state = self.book.state
        if self.busy:
            raise Refused(f"{self.busy} is in progress; try again when it has answered", protocol.BUSY)
        if state not in runbook.ALLOWED_FROM[action]:
            raise Refused(f"{action} needs state {' or '.join(runbook.ALLOWED_FROM[action])}; the state is {state} "
                          f"({runbook.HINTS[state]})", protocol.BAD_STATE)

    def _run_fields(self, msg, action, cause):
        """The run's fields this transition carries: who asked for it (`by`, default the sender) and the step of
        a sequence it belongs to (`sequence`), given at prepare_run or begin_run, go into the run log; so does who
        began it (`began_by`) and who or what ended it (`ended_by`: the client, the operator, the sequence step, or
        the `cause`: an alarm, a signal)."""
        tags = {key: msg[key] for key in ("by", "sequence") if msg.get(key) is not None}
        if action == "prepare_run":
            return {"run": None, "by": msg.get("from"), **tags}
        fields = dict(self.book.current)
        if action == "begin_run":
            fields.update(comment=msg.get("comment", ""), params=msg.get("params", {}), **tags)
            fields.setdefault("by", msg.get("from"))
            fields["began_by"] = {"client": msg.get("from"), "operator": msg.get("by") or fields.get("by"),
                                  "sequence": fields.get("sequence")}
        elif action in ("end_run", "abort_run"):
            fields["ended_by"] = {"client": msg.get("from"), "operator": msg.get("by") if not cause else None,
                                  "sequence": msg.get("sequence"), "alarm": cause.get("alarm"),
                                  "signal": cause.get("signal")}
        elif action in ("pause_run", "resume_run"):
            fields["asked_by"] = {"client": msg.get("from"), "operator": msg.get("by") if not cause else None,
                                  "alarm": cause.get("alarm")}
        return fields

    def _conclude(self, reply, action, fields, staged, why, result, cause):
        participants, problems, run = staged.names, staged.problems, fields["run"]
        if staged.blocking and action != "abort_run":
            said = "; ".join(f"{name} {problems[name]}" for name in staged.blocking)
            stage = f" at stage {staged.failed_stage + 1} of {len(staged.stages)}" if len(staged.stages) > 1 else ""
            back = [f"{t['transition']} to {', '.join(t['names'])}" for t in staged.taken_back]
            log.warning("%s of run %s failed%s: %s", action, run, stage, said)
            if action == "prepare_run":
                self.book.log({"run": run, "result": "failed", "why": f"prepare: {said}", "problems": problems,
                               **({"excluded": fields["excluded"]} if fields.get("excluded") else {}),
                               **{k: fields[k] for k in TAGS if fields.get(k) is not None}})
                self._concluded(run)
            reply.refuse(f"{action} of run {run} failed{stage}, the state stays {self.book.state}: {said}"
                         + (f"; taken back: {'; '.join(back)}" if back else ""), protocol.FAILED)
            return
        reports = {name: answer.result for name, answer in staged.answers.items() if answer.ok
                   and isinstance(answer.result, dict) and answer.result.keys() - {"state", "run"}}
        self._enter(action, fields, participants, problems, why, reports, result, staged.deferred, cause)
        reply.resolve({"state": self.book.state, "run": run, "participants": participants, "problems": problems,
                       **({"stages": staged.stages} if len(staged.stages) > 1 else {}),
                       **({"deferred": staged.deferred} if staged.deferred else {}),
                       **({"comment": fields.get("comment")} if action == "begin_run" else {})})

    def _enter(self, action, fields, participants, problems, why, reports, result, deferred, cause):
        now = time.time()
        target = runbook.TARGET[action]
        if action == "prepare_run":
            self.book.enter(target, **{**fields, "prepared": now, "participants": participants})
        elif action == "begin_run":
            extra = {}
            for hook in self.begin_hooks:
                extra.update(hook(fields["run"]))
            self.book.enter(target, **{**fields, "start": now, "participants": participants, **extra})
            self.book.log(self._running_line(extra))
        elif action in ("pause_run", "resume_run"):
            pauses = [dict(p) for p in fields.get("pauses", [])]
            if action == "pause_run":
                pauses.append({"at": round(now, 3), "why": why or "", "by": fields["asked_by"]})
            else:
                pauses[-1].update(until=round(now, 3), duration=round(now - pauses[-1]["at"], 3))
            current = {k: v for k, v in fields.items() if k not in ("asked_by", "suspended_by", "pauses")}
            if action == "pause_run" and cause.get("alarm"):
                current["suspended_by"] = cause["alarm"]   # the alarm's clearing resumes it
            self.book.enter(target, **current, pauses=pauses)
            self.book.log(self._running_line())
        else:
            started = fields.get("start")
            result = result or ("aborted" if action == "abort_run" else "ended")
            pauses = [dict(p) for p in fields.get("pauses", [])]
            if pauses and "until" not in pauses[-1]:
                pauses[-1].update(until=round(now, 3), duration=round(now - pauses[-1]["at"], 3))
            paused_s = round(sum(p["duration"] for p in pauses), 3)
            duration = round(now - started, 3) if started else None
            self.book.log({"run": fields["run"], "comment": fields.get("comment"), "params": fields.get("params"),
                           "participants": participants, "start": started, "end": now,
                           "duration": duration, "result": result,
                           **({"pauses": pauses, "paused_s": paused_s,
                               "live_s": round(duration - paused_s, 3) if duration is not None else None}
                              if pauses else {}),
                           **({"why": why} if why else {}), **({"problems": problems} if problems else {}),
                           **({"deferred": deferred} if deferred else {}),
                           **({"config": fields["config"]} if fields.get("config") else {}),
                           **({"reports": reports} if reports else {}),
                           **{k: fields[k] for k in ("began_by", "ended_by", "excluded") if fields.get(k)},
                           **{k: fields[k] for k in TAGS if fields.get(k) is not None}})
            self.book.enter(target)
            self._concluded(fields["run"])
        if action in ("end_run", "abort_run") and why:
            message = f"Ended run {fields['run']}: {why}"
        else:
            message = f"{WORDS[action]} {fields['run']}" + (f": {why}" if why and action == "pause_run" else "")
        log.info("%s: state %s", message, target)
        self.client.send(None, "_event", kind="run_state", state=target, run=fields["run"], transition=action,
                         message=message, comment=fields.get("comment"))

    def _running_line(self, extra=()):
        """The run log's line of a running run (as it begins, pauses, resumes)."""
        current = self.book.current
        line = {k: current.get(k) for k in ("run", "comment", "params", "participants", "start", "began_by", *extra)}
        return line | {k: current[k] for k in (*TAGS, "excluded", "pauses") if current.get(k) is not None} \
            | {"result": "running"}

    def _concluded(self, run):
        """The run's outcome is in the run log: tell whoever follows outcomes (the run catalog)."""
        for hook in self.end_hooks:
            hook(run)

    def rejoin(self, name):
        """Tell a participant that (re)joined during a run where the run is, at once."""
        state, current = self.book.state, self.book.current
        if state == runbook.STOP or name not in self.participations() or self.busy in ("end_run", "abort_run"):
            return   # (a run being ended needs no one to join it)
        log.info("%s joined during run %s (%s): telling it", name, current.get("run"), state)
        run = current.get("run")

        def then_begin(answer):
            if answer.ok and self.book.state in runbook.IN_RUN:
                self.client.start({"to": name, **protocol.make_transition(
                    "begin", run, comment=current.get("comment", ""), params=current.get("params", {}), rejoin=True)},
                    on_answer=then_pause)

        def then_pause(answer):
            if answer.ok and self.book.state == runbook.PAUSED:
                self.client.start({"to": name, **protocol.make_transition("pause", run, rejoin=True)})
        self.client.start({"to": name, **protocol.make_transition("prepare", run, rejoin=True)}, on_answer=then_begin)


class Outcome:
    """Where the answer of a transition the run controller starts itself goes (at shutdown)."""

    def __init__(self):
        self.done, self.result, self.error = False, None, None

    def resolve(self, result=None):
        self.done, self.result = True, result

    def refuse(self, error, code=None):
        self.done, self.error = True, error

    def progress(self, **data):
        """Nobody waits on the progress of a transition the run controller started itself."""
