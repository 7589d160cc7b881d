"""Run transitions: STOP -> READY -> RUN -> STOP, driven through every participant.

Owns the work of the run commands (`prepare_run`, `begin_run`, `end_run`,
`abort_run`, `runs`; their payloads are checked by `commands/`): checking the
state, asking each participant with `_transition` and waiting for all answers
within the timeout, concluding (state entered and logged in the run book,
`run_state` event) or refusing with the name of each participant that refused
or stayed silent; and telling a participant that (re)joins during a run where
the run is. Must not spawn processes.
"""

import logging
import time

from runcontrol import protocol
from runcontrol.control import runbook
from runcontrol.errors import Refused

log = logging.getLogger("runcontrol.controller")

TRANSITION_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0   # how long a stop of the experiment waits for the participants to end the run
MAX_TRANSITION_TIMEOUT_S = 600.0   # the most a request's `timeout` may ask for (commands/ checks it)
WORDS = {"prepare_run": "Prepared run", "begin_run": "Beginning run", "end_run": "Ending run",
         "abort_run": "Aborted run"}


TAGS = ("by", "sequence")   # what a run carries of who asked for it, into every record of the run log

class RunDesk:
    def __init__(self, client, supervisor, book, waiters):
        self.client = client
        self.supervisor = supervisor
        self.book = book
        self.waiters = waiters
        self.run_clients = set()   # clients that said meta.participant (or the earlier meta.run) in their _hello
        self.busy = None
        self.begin_hooks = []      # each called with the run number as it begins: fields for its record
        self.end_hooks = []        # each called with the run number once its outcome (ended, failed) is in the run log

    def records(self, n):
        """The latest record of each of the last `n` runs, newest last."""
        return self.book.records()[-n:] if n else []

    def participants(self):
        names = {p.spec.client for p in self.supervisor.programs.values()
                 if p.spec.participant and p.spec.client and not p.retired}
        return sorted(names | self.run_clients)

    def client_joined(self, name, meta):
        if isinstance(meta, dict) and (meta.get("participant") is True or meta.get("run") is True):
            self.run_clients.add(name)

    def client_left(self, name):
        self.run_clients.discard(name)

    # --- one transition ---------------------------------------------------------------------

    def end_for_shutdown(self, why, signal=None):
        """The experiment is being stopped (`signal`: what stopped it, for the record): an open run ends first
        (participants told `end` with `why`, the record saying so). Returns an Outcome to wait on, or None when no
        run is open."""
        return self.end_because(why, "ended by shutdown", (runbook.READY, runbook.RUN), SHUTDOWN_TIMEOUT_S,
                                signal=signal)

    def end_because(self, why, result, states=(runbook.RUN,), timeout=TRANSITION_TIMEOUT_S, **cause):
        """End the run in one of `states` whatever the participants answer, `why` told to them and logged in
        the record with `result` and `cause` (alarm=NAME, signal=TEXT: what ended it). An Outcome to wait on, or
        None when there is no such run or one is changing."""
        if self.book.state not in states or self.busy:
            return None
        outcome = Outcome()
        self.transition({"timeout": timeout, "from": self.client.name}, "abort_run", outcome, why, result, cause)
        return outcome

    def transition(self, msg, action, reply=None, why=None, result=None, cause=None):
        """Start `action` (a run command) asked by `msg`: the answer comes when every participant has answered, or
        the timeout; `reply` (default: a deferred answer to `msg`) takes it. Refused at once when another transition
        is under way or the state does not allow it."""
        self._check(action)
        timeout = msg.get("timeout", TRANSITION_TIMEOUT_S)
        fields = self._run_fields(msg, action, cause or {})
        if action == "prepare_run":
            fields["run"] = self.book.next_number()  # on disk before any participant hears of it
        participants = self.participants()
        answers = {}
        ask = protocol.make_transition(runbook.WIRE[action], fields["run"], comment=fields.get("comment"),
                                       params=fields.get("params"), abort=action == "abort_run" and not why,
                                       reason=why)
        pendings = {name: self.client.start({"to": name, **ask},
                                            on_answer=lambda answer, n=name: answers.__setitem__(n, answer))
                    for name in participants}
        self.busy = action
        reply = reply or self.client.defer(msg)
        log.info("%s: run %s, asking %s, answers within %g s", action, fields["run"],
                 ", ".join(participants) or "no participant", timeout)

        def finish():
            self.busy = None
            for name, pending in pendings.items():
                if name not in answers:
                    self.client.abandon(pending)
            self._conclude(reply, action, fields, participants, answers, why, result)
        self.waiters.add(lambda: len(answers) == len(participants), finish, timeout, finish)
        return reply

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
        return fields

    def _conclude(self, reply, action, fields, participants, answers, why=None, result=None):
        problems = {name: describe_problem(answers.get(name)) for name in participants
                    if name not in answers or not answers[name].ok}
        run = fields["run"]
        if problems and action != "abort_run":
            why = "; ".join(f"{name} {problem}" for name, problem in problems.items())
            log.warning("%s of run %s failed: %s", action, run, why)
            if action == "prepare_run":
                self.book.log({"run": run, "result": "failed", "why": f"prepare: {why}", "problems": problems,
                               **{k: fields[k] for k in TAGS if fields.get(k) is not None}})
                self._concluded(run)
            if action == "begin_run":
                for name in participants:
                    if name not in problems:  # those that had begun end it, aborted
                        self.client.post({"to": name, **protocol.make_transition("end", run, abort=True)})
            reply.refuse(f"{action} of run {run} failed, the state stays {self.book.state}: {why}", protocol.FAILED)
            return
        reports = {name: answer.result for name, answer in answers.items() if answer.ok and isinstance(answer.result, dict)
                   and answer.result.keys() - {"state", "run"}}  # what participants said of the run, beyond its state
        self._enter(action, fields, participants, problems, why, reports, result)
        reply.resolve({"state": self.book.state, "run": run, "participants": participants,
                       "problems": problems, **({"comment": fields.get("comment")} if action == "begin_run" else {})})

    def _enter(self, action, fields, participants, problems, why=None, reports=None, result=None):
        now = time.time()
        target = runbook.TARGET[action]
        if action == "prepare_run":
            self.book.enter(target, **{**fields, "prepared": now, "participants": participants})
        elif action == "begin_run":
            extra = {}
            for hook in self.begin_hooks:
                extra.update(hook(fields["run"]))
            self.book.enter(target, **{**fields, "start": now, "participants": participants, **extra})
            self.book.log({k: self.book.current.get(k) for k in ("run", "comment", "params", "participants",
                                                                  "start", "began_by", *extra)}
                          | {k: self.book.current[k] for k in TAGS if self.book.current.get(k) is not None}
                          | {"result": "running"})
        else:
            started = fields.get("start")
            result = result or ("aborted" if action == "abort_run" else "ended")
            self.book.log({"run": fields["run"], "comment": fields.get("comment"), "params": fields.get("params"),
                           "participants": participants, "start": started, "end": now,
                           "duration": round(now - started, 3) if started else None, "result": result,
                           **({"why": why} if why else {}), **({"problems": problems} if problems else {}),
                           **({"config": fields["config"]} if fields.get("config") else {}),
                           **({"reports": reports} if reports else {}),
                           **{k: fields[k] for k in ("began_by", "ended_by") if fields.get(k)},
                           **{k: fields[k] for k in TAGS if fields.get(k) is not None}})
            self.book.enter(target)
            self._concluded(fields["run"])
        message = f"Ended run {fields['run']}: {why}" if why else f"{WORDS[action]} {fields['run']}"
        log.info("%s: state %s", message, target)
        self.client.send(None, "_event", kind="run_state", state=target, run=fields["run"], transition=action,
                         message=message, comment=fields.get("comment"))

    def _concluded(self, run):
        """The run's outcome is in the run log: tell whoever follows outcomes (the run catalog)."""
        for hook in self.end_hooks:
            hook(run)

    def rejoin(self, name):
        """Tell a participant that (re)joined during a run where the run is, at once."""
        state, current = self.book.state, self.book.current
        if state == runbook.STOP or name not in self.participants():
            return
        log.info("%s joined during run %s (%s): telling it", name, current.get("run"), state)
        run = current.get("run")

        def then_begin(answer):
            if answer.ok and self.book.state == runbook.RUN:
                self.client.start({"to": name, **protocol.make_transition(
                    "begin", run, comment=current.get("comment", ""), params=current.get("params", {}), rejoin=True)})
        self.client.start({"to": name, **protocol.make_transition("prepare", run, rejoin=True)}, on_answer=then_begin)


class Outcome:
    """Where the answer of a transition the run controller starts itself goes (at shutdown)."""

    def __init__(self):
        self.done, self.result, self.error = False, None, None

    def resolve(self, result=None):
        self.done, self.result = True, result

    def refuse(self, error, code=None):
        self.done, self.error = True, error


def describe_problem(answer):
    """What a participant's answer to a transition (None: no answer) says went wrong."""
    if answer is None:
        return "silent (no answer in time)"
    if answer.code == protocol.NO_SUCH_CLIENT:
        return "silent (not registered)"
    if answer.code == protocol.CLIENT_LOST:
        return f"lost ({answer.error})"
    return f"refused: {answer.error}"
