"""Alarms, answered by the run controller: watching, raising, clearing, acknowledging, acting.

Owns following the published numbers the experiment's alarms watch (and the
retained ones after a start), evaluating the declared and the built-in
conditions twice a second, turning what `conditions.Holds` decides into changes
of the `AlarmBook` with an event each (`alarm_raised`, `alarm_cleared`,
`alarm_acked`), the actions of a raised alarm (log, publish, end the run, pause
it and resume it once the alarm cleared, send a command), and the work of the commands `alarms` and `ack`. Must not spawn
processes.
"""

import logging
import time

from runcontrol import protocol
from runcontrol.control import runbook
from runcontrol.control.alarmbook import AlarmBook
from runcontrol.control.conditions import Holds, Values, program_checks, value_check
from runcontrol.errors import Refused

log = logging.getLogger("runcontrol.controller")

EVERY_S = 0.5
LOG_LINES_MAX = 1000
SEND_TIMEOUT_S = 10.0
RESUME_AGAIN_S = 30.0   # a run an alarm paused, whose resume failed (a participant away), is tried again after this


class AlarmDesk:
    def __init__(self, client, supervisor, runs, waiters, registered, folder, alarms, grace_s):
        """`runs`: the RunDesk (an alarm may end the run); `registered`: the set of the clients registered now;
        `folder`: where the AlarmBook keeps them; `alarms`: the experiment's declared alarms."""
        self.client = client
        self.supervisor = supervisor
        self.runs = runs
        self.registered = registered
        self.waiters = waiters
        self.specs = {}
        self.sources = set()   # the publishers subscribed to
        self.book = AlarmBook(folder)
        self.holds = Holds()
        self.started = time.time()
        self.values = Values(self.started)
        self.grace_s = grace_s   # after a start nothing clears this long: states and values are not known yet
        self.evaluated = 0.0
        self._resuming = None          # the Outcome of a resume of a run an alarm paused, until it has its answer
        self._resume_not_before = 0.0
        self.use(alarms)

    def use(self, alarms):
        """Watch these declared alarms (at the start, and after the experiment is reloaded); one that is gone
        clears at the next evaluation."""
        self.specs = {alarm.name: alarm for alarm in alarms}
        for source in sorted(watched_sources(alarms) - self.sources):
            self.client.subscribe(f"pub.{source}.", self._on_published)
            self.sources.add(source)

    # --- what comes in -------------------------------------------------------------------------

    def _on_published(self, topic, event):
        if isinstance(event, dict):
            ts = event.get("ts")
            self.values.take(topic[len("pub."):], event.get("data"), ts if isinstance(ts, (int, float)) else time.time())

    def seed(self):
        """Take the retained values of the watched numbers: after a start, and after the server restarted."""
        if not self.specs:
            return

        def take(answer):
            if answer.ok and isinstance(answer.result, dict):
                for key, held in answer.result.items():
                    if isinstance(held, dict) and isinstance(held.get("ts"), (int, float)):
                        self.values.take(key, held.get("data"), held["ts"])
        self.client.start({"cmd": "_retained"}, on_answer=take)

    # --- evaluating ----------------------------------------------------------------------------

    def due(self):
        return self.evaluated + EVERY_S

    def evaluate(self, now=None):
        now = time.time() if now is None else now
        self.evaluated = time.monotonic()
        runs = self.runs.book
        checks = [value_check(alarm, self.values, now) for alarm in self.specs.values()]
        checks += program_checks(self.supervisor.brief(), self.supervisor.hosts(), runs.state, runs.run,
                                 runs.current.get("participants", ()) if runs.state in runbook.IN_RUN else (),
                                 self.registered)
        raised, cleared = self.holds.update(checks, self.book.active(), now)
        for check in raised:
            record = self.book.raise_(check, now)
            self._emit("alarm_raised", record)
            self._act(self.specs.get(check.alarm), record, now)
        if now - self.started < self.grace_s:
            return
        for name in cleared:
            record = self.book.clear(name, now)
            self._emit("alarm_cleared", record)
            log.info("alarm %s cleared: %s", name, record["message"])
            self._publish(name, record)
        self.resume_suspended(now)

    def _emit(self, kind, record):
        self.client.send(None, "_event", kind=kind, **record)

    # --- actions -------------------------------------------------------------------------------

    def _act(self, spec, record, now):
        """What a raised alarm does: a built-in one is logged; a declared one does its `actions`."""
        name = record["alarm"]
        actions = spec.actions if spec else ("log",)
        say = log.error if record["severity"] == "alarm" else log.warning
        if "log" in actions:
            say("%s %s: %s (value %s)", record["severity"].upper(), name, record["message"], record["value"])
        if "publish" in actions:
            self._publish(name, record)
        if "end_run" in actions:
            self._end_run(name, record, now)
        if "pause_run" in actions:
            self._pause_run(name, record, now)
        for action in actions:
            if not isinstance(action, str):
                self._send(name, dict(action["send"]), now)

    def _publish(self, name, record):
        spec = self.specs.get(name)
        if spec and "publish" in spec.actions:
            self.client.publish(f"alarm.{name}", {"active": int(record["state"] == "active"),
                                                  "severity": record["severity"], "message": record["message"],
                                                  "value": record["value"], "acked": record["acked"]}, retain=True)

    def _end_run(self, name, record, now):
        why = f"alarm {name}: {record['message']}"
        ending = self.runs.end_because(why, "ended by alarm", alarm=name)
        if ending is None:
            busy = self.runs.busy
            self.book.note(name, "end_run", now, done=False,
                           why=f"{busy} in progress" if busy else f"no run to end (state {self.runs.book.state})")
        else:
            log.error("ending run %s: %s", self.runs.book.run, why)
            self.book.note(name, "end_run", now, done=True, run=self.runs.book.run)

    def _pause_run(self, name, record, now):
        why = f"alarm {name}: {record['message']}"
        pausing = self.runs.suspend_because(why, name)
        if pausing is None:
            busy = self.runs.busy
            self.book.note(name, "pause_run", now, done=False,
                           why=f"{busy} in progress" if busy else f"no run to pause (state {self.runs.book.state})")
        else:
            log.error("pausing run %s: %s", self.runs.book.run, why)
            self.book.note(name, "pause_run", now, done=True, run=self.runs.book.run)

    def resume_suspended(self, now):
        """A run an alarm paused resumes once that alarm cleared (and was acknowledged, if its `resume` says so);
        tried at each evaluation until it is done, so a busy moment or a restart only delays it."""
        runs = self.runs.book
        alarm = runs.current.get("suspended_by") if runs.state == runbook.PAUSED else None
        spec = self.specs.get(alarm)
        resuming, self._resuming = self._resuming, None
        if resuming is not None and not resuming.done:
            self._resuming = resuming
            return
        if resuming is not None:   # the last try has its answer
            self.book.note(alarm or "?", "resume_run", now, done=resuming.error is None, run=runs.run,
                           **({"why": resuming.error} if resuming.error else {}))
            if resuming.error:
                log.warning("resuming run %s failed (tried again in %g s): %s", runs.run, RESUME_AGAIN_S,
                            resuming.error)
                self._resume_not_before = time.monotonic() + RESUME_AGAIN_S
        if alarm is None or self.runs.busy or (spec is not None and spec.resume == "never") \
                or time.monotonic() < self._resume_not_before:
            return
        record = self.book.alarms.get(alarm)
        if record is not None and (record["state"] == "active" or (spec is not None and spec.resume == "acked"
                                                                   and not record["acked"])):
            return
        self._resuming = self.runs.suspend_because(f"alarm {alarm} cleared", alarm, resume=True)
        if self._resuming is not None:
            log.warning("resuming run %s: alarm %s cleared", runs.run, alarm)

    def _send(self, name, send, now):
        msg = {k: v for k, v in send.items() if k not in ("id", "re", "from")}

        def answered(answer):
            outcome = {"result": answer.result} if answer.ok else {"error": answer.error, "code": answer.code}
            self.book.note(name, "send", time.time(), to=msg["to"], cmd=msg["cmd"], ok=answer.ok, **outcome)
            if not answer.ok:
                log.warning("alarm %s: %s %s failed: %s", name, msg["to"], msg["cmd"], answer.error)

        def silent():
            self.client.abandon(pending)
            self.book.note(name, "send", time.time(), to=msg["to"], cmd=msg["cmd"], ok=False,
                           error=f"no answer within {SEND_TIMEOUT_S:g} s")
        pending = self.client.start(msg, on_answer=answered)
        self.waiters.add(lambda: pending.answer is not None, lambda: None, SEND_TIMEOUT_S, silent)

    # --- commands ------------------------------------------------------------------------------

    def listing(self, lines):
        """The standing alarms (unacknowledged first); with `lines`, also that many lines of the alarm log."""
        answer = {"alarms": self.book.listing()}
        if lines:
            answer["log"] = self.book.tail(lines)
        return answer

    def ack(self, name, by):
        """Acknowledge the alarm `name` (None: every standing one) as `by`."""
        now = time.time()
        names = [r["alarm"] for r in self.book.listing() if not r["acked"]] if name is None else [name]
        acked = []
        for one in names:
            before = self.book.alarms.get(one, {}).get("acked")
            try:
                record = self.book.ack(one, by, now)
            except LookupError as exc:
                raise Refused(str(exc), protocol.NO_SUCH_ALARM) from None
            if before is None:
                self._emit("alarm_acked", record)
                self._publish(one, record)
                log.info("alarm %s acknowledged by %s", one, by)
            acked.append(record)
        return {"acked": acked}


def watched_sources(alarms):
    """The publishers whose numbers the alarms watch: the first part of each name."""
    names = [a.value for a in alarms] + [a.relative_to for a in alarms if a.relative_to]
    return {name.split(".", 1)[0] for name in names}
