"""Notifications as they reach a person: a real SMTP server (aiosmtpd) and a real HTTP receiver (aiohttp) on
loopback stand for the mail and the chat service; a real notifier, run controller, server and instrument (and a
whole damicm). Reminders, a minute apart at the least, are checked on the rules alone (clients/notify/rules.py)."""

import asyncio
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from clients.notify import rules
from experiments import NotifyRule
from runcontrol.errors import Refused, RunControlError
from tests import helpers
from tests.helpers import ROOT, ControllerProcess, damicm_copy, env_for_children, free_port

OPERATORS = []   # the operator clients of this test's systems: kept answering their server's pings while we wait


def wait_until(predicate, timeout_s=10.0, interval_s=0.02, what=None):
    """helpers.wait_until; meanwhile the test's operator clients answer their server's pings (a client silent for
    the server's timeout is dropped, and its next request would wait for it to register again)."""
    def polled():
        for op in OPERATORS:
            op.poll(0)
        return predicate()
    return helpers.wait_until(polled, timeout_s, interval_s, what)


@pytest.fixture
def system(system):
    def make(*args, **kwargs):
        made = system(*args, **kwargs)
        OPERATORS.append(made.op)
        return made
    yield make
    OPERATORS.clear()

COLD, WARM = 150, 250


class MailBox:
    """An SMTP server on loopback that keeps every message (or refuses each with 554, when told to)."""

    def __init__(self):
        self.messages, self.refuse = [], False
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return "554 refused by the test"
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def url(self, to="shift@example.org"):
        return f"mailto://127.0.0.1:{self.port}?from=orbit@example.org&to={to}&mode=insecure"

    def subjects(self):
        return [m["Subject"] for m in self.messages]

    def close(self):
        self.controller.stop()


class Hook:
    """An HTTP receiver on loopback (what a chat service's webhook is): keeps each JSON body and when it came, or
    answers 500; it also counts the GETs of /beat (what a dead man's switch service is)."""

    def __init__(self, port=None):
        self.bodies, self.arrivals, self.beats, self.status = [], [], [], 200
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _serve(self, ready):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._take)
        app.router.add_get("/beat", self._beat)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    async def _take(self, request):
        if self.status != 200:
            return web.Response(status=self.status, text="the test says no")
        self.bodies.append(await request.json())
        self.arrivals.append(time.time())
        return web.Response(text="ok")

    async def _beat(self, request):
        self.beats.append(time.time())
        return web.Response(text="OK")

    def url(self):
        return f"json://127.0.0.1:{self.port}/hook"

    def beat_url(self):
        return f"http://127.0.0.1:{self.port}/beat"

    def titles(self):
        return [b.get("title") for b in self.bodies]

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def receivers():
    mail, hook = MailBox(), Hook()
    yield mail, hook
    mail.close()
    hook.close()


def cryo_and_notifier(tmp_path):
    return {"cryo": {"cmd": ["python", "-m", "clients.sim.cryo", "--name", "cryo", "--start", str(COLD)],
                     "client": "cryo", "config": {"rate": 100}},   # its settings say how fast it warms
            "notifier": {"cmd": ["python", "-m", "clients.notifier", "--state", str(tmp_path / "notifier")],
                         "client": "notifier"}}


WARM_ALARM = {"warm": {"value": "cryo.values.temperature", "above": 200, "message": "CCDs too warm",
                       "actions": ["log"]}}


def test_an_alarm_is_mailed_escalates_unacknowledged_and_its_clearing_follows(system, tmp_path, receivers):
    mail, hook = receivers
    s = system(cryo_and_notifier(tmp_path), alarms=WARM_ALARM,
               notify={"routes": {"shift": [mail.url()], "experts": [hook.url()]},
                       "rules": [{"route": "shift", "escalate_after": 3, "escalate_to": "experts"}],
                       "link": "http://127.0.0.1:8080"})
    for name in ("cryo", "notifier"):
        s.wait_state(name, "RUNNING", registered=True)
    set_point(s, WARM)
    wait_until(lambda: mail.messages, 60, 0.2, what="the alarm's mail")
    first = mail.messages[0]
    assert first["Subject"] == "[ctl] ALARM warm" and first["To"] == "shift@example.org"
    body = first.get_body(("plain", "html")).get_content()
    assert "CCDs too warm" in body and "value: " in body and "raised: " in body
    assert "http://127.0.0.1:8080/#alarms/warm" in body
    wait_until(lambda: hook.bodies, 60, 0.2, what="the escalation to the experts' hook")
    assert hook.titles() == ["[ctl] unacknowledged: ALARM warm"]
    s.op.request("run", "ack", alarm="warm", by="anna")
    set_point(s, COLD)
    wait_until(lambda: len(mail.messages) == 2 and len(hook.bodies) == 2, 60, 0.2, what="the clearing follow-ups")
    assert mail.subjects()[1] == "[ctl] cleared: ALARM warm" and hook.titles()[1] == "[ctl] cleared: ALARM warm"
    sent = s.op.request("run", "notifications")["sent"]
    assert [(e["route"], e["kind"], e["ok"]) for e in sent[:2]] == [("shift", "raised", True),
                                                                     ("experts", "escalated", True)]
    assert sorted((e["route"], e["kind"], e["ok"]) for e in sent[2:]) == [("experts", "cleared", True),
                                                                           ("shift", "cleared", True)]


def test_notify_test_reaches_every_url_of_a_route_and_says_which_failed(system, tmp_path, receivers):
    mail, hook = receivers
    hook.status = 500
    s = system(cryo_and_notifier(tmp_path), notify={"routes": {"shift": [mail.url(), hook.url()]}})
    s.wait_state("notifier", "RUNNING", registered=True)
    for route in (["shift"], "night"):   # not a name, or no route of that name: said, and nothing sent
        with pytest.raises(Refused) as refused:
            s.op.call({"to": "notifier", "cmd": "test", "route": route}, 20)
        assert refused.value.code == "bad_field" and "routes: shift" in str(refused.value)
    answer = s.op.call({"to": "run", "cmd": "notify_test", "route": "shift", "by": "anna"}, 40)
    assert [(r["url"], r["ok"]) for r in answer["sent"]] == [(0, True), (1, False)]
    assert mail.subjects() == ["[ctl] test: WARNING test"]
    assert "a test message asked by anna" in mail.messages[0].get_body(("plain",)).get_content()
    pending = s.op.request("run", "notifications")["pending"]
    assert [(p["kind"], p["attempts"]) for p in pending] == [("test", 1)]   # the failed one is tried again
    hook.status = 200
    wait_until(lambda: hook.bodies, 60, 0.2, what="the retry to arrive")
    assert s.op.request("run", "notifications")["pending"] == []


# --- maintenance -------------------------------------------------------------------------------------------------

FATAL_WHEN_TOLD = ("import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.1)\n"
                   "sys.exit(3)")


def set_point(s, kelvin):
    """The cryocooler's set point, as a setting: a `set_point` command would last only until the run controller
    delivers its settings (at each registration), which may come just after it."""
    s.op.call({"to": "run", "cmd": "set_config", "program": "cryo", "values": {"set_point": kelvin}}, 30)


def standing(s):
    return {a["alarm"]: a for a in s.op.request("run", "alarms")["alarms"]}


def test_maintenance_of_an_alarm_and_of_a_program_holds_their_messages_until_it_is_ended(system, tmp_path,
                                                                                         receivers):
    _, hook = receivers
    crash = tmp_path / "crash-now"
    programs = {**cryo_and_notifier(tmp_path),
                "board": {"cmd": ["python", "-c", FATAL_WHEN_TOLD, str(crash)], "max_restarts": 0}}
    # `hot` watches what `warm` watches: raised together, its message shows when the notifier has looked
    alarms = {**WARM_ALARM, "hot": {**WARM_ALARM["warm"], "message": "CCDs hot"}}
    s = system(programs, alarms=alarms, notify={"routes": {"shift": [hook.url()]}, "rules": [{"route": "shift"}]})
    for name in ("cryo", "notifier"):
        s.wait_state(name, "RUNNING", registered=True)
    by_alarm = s.op.request("run", "maintenance", minutes=30, reason="cryostat warm-up", alarms=["warm"], by="anna")
    by_program = s.op.request("run", "maintenance", minutes=30, reason="board swap", programs=["board"], by="anna")
    assert (by_alarm["alarms"], by_program["programs"], by_alarm["by"]) == (["warm"], ["board"], "anna")
    def announced():   # the events, as the server's log of events keeps them
        return [e.get("window") for e in s.op.request(None, "_logs", n=200) if e.get("kind") == "maintenance"]
    wait_until(lambda: by_alarm in announced() and by_program in announced(), 60, 0.2, what="both windows announced")
    crash.touch()
    wait_until(lambda: standing(s).get("program.board.fatal"), 30, 0.2, what="the board FATAL")
    set_point(s, WARM)
    wait_until(lambda: hook.bodies, 60, 0.2, what="the message of the alarm not held back")
    wait_until(lambda: {"warm", "program.board.fatal"} <= set(standing(s)), 30, 0.2, what="both alarms standing")
    assert hook.titles() == ["[ctl] ALARM hot"]   # the look that told `hot` saw the others: held back
    assert s.op.request("run", "notifications")["maintenance"] == [by_alarm, by_program]
    assert s.op.request("run", "maintenance", end=True, by="anna") == {"ended": [by_alarm, by_program]}
    s.wait_event("event.maintenance_ended", by="anna")
    wait_until(lambda: len(hook.bodies) == 3, 60, 0.2, what="the alarms held back, told once it ended")
    assert sorted(hook.titles()[1:]) == ["[ctl] ALARM program.board.fatal", "[ctl] ALARM warm"]
    assert s.op.request("run", "notifications")["maintenance"] == []


def test_a_short_maintenance_ends_by_itself_and_a_standing_alarm_is_told_then(system, tmp_path, receivers):
    _, hook = receivers
    s = system(cryo_and_notifier(tmp_path), alarms=WARM_ALARM,
               notify={"routes": {"shift": [hook.url()]}, "rules": [{"route": "shift"}]})
    s.wait_state("notifier", "RUNNING", registered=True)
    window = s.op.request("run", "maintenance", minutes=0.25, reason="calibration")
    set_point(s, WARM)
    raised = s.wait_event("event.alarm_raised", alarm="warm")
    assert raised["raised"] < window["until"]   # raised inside the window
    wait_until(lambda: hook.bodies, 60, 0.2, what="the alarm, once the window ended")
    assert hook.titles() == ["[ctl] ALARM warm"] and hook.arrivals[0] >= window["until"]
    ended = s.wait_event("event.maintenance_ended")
    assert ended["window"] == window and "calibration" in ended["message"]


@pytest.mark.parametrize("to", ["run", "notifier"])
@pytest.mark.parametrize("fields, names", [({"minutes": 0, "reason": "calibration"}, "'minutes'"),
                                           ({"minutes": 10}, "'reason'")])
def test_a_maintenance_without_minutes_or_reason_is_refused_bad_field(system, tmp_path, to, fields, names):
    s = system(cryo_and_notifier(tmp_path), notify={"routes": {"shift": ["orbitfile://shift.jsonl"]}})
    s.wait_state("notifier", "RUNNING", registered=True)
    with pytest.raises(Refused) as refused:
        s.op.request(to, "maintenance", **fields)
    assert refused.value.code == "bad_field" and names in str(refused.value)
    assert s.op.request("run", "notifications")["maintenance"] == []


# --- the outbox, retries and the delivery alarm --------------------------------------------------------------------

def restarted(s, name, pid):
    info = s.program(name)
    return info["pid"] != pid and info["state"] == "RUNNING" and info["registered"]


def test_messages_waiting_in_the_outbox_of_a_killed_notifier_are_sent_after_its_restart_each_once(system, tmp_path,
                                                                                                   receivers):
    _, hook = receivers
    alarms = {**WARM_ALARM, "hot": {"value": "cryo.values.temperature", "above": 270, "message": "CCDs hot"}}
    s = system(cryo_and_notifier(tmp_path), alarms=alarms,
               notify={"routes": {"shift": [hook.url()]}, "rules": [{"route": "shift"}], "retry": {"first": 0.5}})
    s.wait_state("notifier", "RUNNING", registered=True)
    set_point(s, WARM)
    wait_until(lambda: hook.bodies, 60, 0.2, what="the first alarm's message")
    wait_until(lambda: [e["ok"] for e in s.op.request("run", "notifications")["sent"]] == [True], 30, 0.2,
               what="its delivery recorded")
    hook.status = 500
    set_point(s, 290)
    wait_until(lambda: [(p["alarm"], p["attempts"] >= 1) for p in s.op.request("run", "notifications")["pending"]]
               == [("hot", True)], 60, 0.2, what="the second alarm's message waiting in the outbox")
    killed = s.program("notifier")["pid"]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: restarted(s, "notifier", killed), 60, 0.2, what="the notifier restarted")
    hook.status = 200
    wait_until(lambda: len(hook.bodies) == 2, 60, 0.2, what="the waiting message, sent by the new notifier")
    set_point(s, COLD)   # both clear: their follow-ups come after anything resent
    wait_until(lambda: len(hook.bodies) >= 4, 60, 0.2, what="the clearing follow-ups")
    assert sorted(hook.titles()) == ["[ctl] ALARM hot", "[ctl] ALARM warm", "[ctl] cleared: ALARM hot",
                                     "[ctl] cleared: ALARM warm"]
    assert s.op.request("run", "notifications")["pending"] == []


class Refusing:
    """A receiver that refuses (SMTP 554, HTTP 500) or is not there, until it is told to accept; `backup`: one that
    works, for the other route."""

    def __init__(self, kind, mail, hook):
        self.kind, self.mail, self.hook, self.late = kind, mail, hook, None
        self.port = free_port()
        mail.refuse, hook.status = kind == "smtp 554", 500 if kind == "http 500" else 200
        self.backup, self.backup_titles = (hook, hook.titles) if kind == "smtp 554" else (mail, mail.subjects)

    def url(self):
        if self.kind == "smtp 554":
            return self.mail.url()
        return self.hook.url() if self.kind == "http 500" else f"json://127.0.0.1:{self.port}/hook"

    def accept(self):
        self.mail.refuse, self.hook.status = False, 200
        if self.kind == "nothing listening":
            self.late = Hook(self.port)

    def titles(self):
        if self.kind == "smtp 554":
            return self.mail.subjects()
        if self.kind == "http 500":
            return self.hook.titles()
        return self.late.titles() if self.late else []

    def close(self):
        if self.late:
            self.late.close()


@pytest.fixture(params=["smtp 554", "http 500", "nothing listening"])
def refusing(request, receivers):
    receiver = Refusing(request.param, *receivers)
    yield receiver
    receiver.close()


def test_a_refusing_receiver_is_retried_raises_the_delivery_alarm_told_elsewhere_and_gets_it_later(system, tmp_path,
                                                                                                    refusing):
    s = system(cryo_and_notifier(tmp_path), alarms=WARM_ALARM,
               notify={"routes": {"shift": [refusing.url()], "backup": [refusing.backup.url()]},
                       "rules": [{"route": "shift", "alarms": ["warm"]},
                                 {"route": "backup", "alarms": ["notify.delivery"]}],
                       "retry": {"first": 0.2, "max": 1, "alarm_after": 3}})
    s.wait_state("notifier", "RUNNING", registered=True)
    set_point(s, WARM)

    def tries():
        pending = s.op.request("run", "notifications")["pending"]
        return pending[0]["attempts"] if pending else 0
    first = wait_until(tries, 60, 0.1, what="a first try")
    wait_until(lambda: tries() > first, 60, 0.1, what="the tries growing")
    wait_until(lambda: tries() >= 3, 60, 0.1, what="alarm_after tries")
    failed = [e for e in s.op.request("run", "notifications")["sent"] if not e["ok"]]
    assert [e["attempt"] for e in failed[:3]] == [1, 2, 3] and all(e["error"] for e in failed)
    wait_until(lambda: standing(s).get("notify.delivery", {}).get("state") == "active", 30, 0.2,
               what="the delivery alarm")
    wait_until(lambda: "[ctl] ALARM notify.delivery" in refusing.backup_titles(), 60, 0.2,
               what="the delivery alarm told to the route that works")
    assert refusing.titles() == []
    refusing.accept()
    wait_until(lambda: refusing.titles() == ["[ctl] ALARM warm"], 60, 0.2, what="the message, once accepted")
    wait_until(lambda: s.op.request("run", "notifications")["pending"] == [], 30, 0.2, what="nothing left waiting")
    wait_until(lambda: standing(s)["notify.delivery"]["state"] == "cleared", 30, 0.2, what="the delivery alarm cleared")
    wait_until(lambda: "[ctl] cleared: ALARM notify.delivery" in refusing.backup_titles(), 60, 0.2,
               what="its clearing told")


# --- the dead man's switch ------------------------------------------------------------------------------------------

def stops_growing(count, what, polls=15, interval_s=0.2):
    """Wait until `count()` has not grown over `polls` polls in a row (three calls' worth at one a second)."""
    seen = []

    def steady():
        seen.append(count())
        return len(seen) > polls and seen[-1] == seen[-1 - polls]
    wait_until(steady, 60, interval_s, what=what)


def grows(count, by, what):
    start = count()
    wait_until(lambda: count() >= start + by, 60, 0.2, what=what)


def beating(system, tmp_path, hook):
    s = system(cryo_and_notifier(tmp_path), alarms=WARM_ALARM,
               notify={"routes": {"shift": ["orbitfile://shift.jsonl"]},
                       "heartbeat": {"url": hook.beat_url(), "every": 1}})
    s.wait_state("notifier", "RUNNING", registered=True)
    grows(lambda: len(hook.beats), 3, "the calls while all is well")
    return s


def test_the_dead_mans_calls_stop_while_an_alarm_stands_unacknowledged_and_resume_once_acknowledged(
        system, tmp_path, receivers):
    _, hook = receivers
    s = beating(system, tmp_path, hook)
    set_point(s, WARM)
    s.wait_event("event.alarm_raised", alarm="warm")
    stops_growing(lambda: len(hook.beats), "the calls to stop while the alarm stands unacknowledged")
    s.op.request("run", "ack", alarm="warm", by="anna")
    grows(lambda: len(hook.beats), 2, "the calls again once acknowledged")


def start_controller(s):
    """A run controller in place of a killed one; it answers once it has stopped what its predecessor left."""
    s.controller = ControllerProcess(s.path).start()

    def answers():
        try:
            return s.op.request("run", "status", timeout=2)["controller"]["pid"] == s.controller.proc.pid
        except RunControlError:
            return False
    wait_until(answers, 60, 0.2, what="the new run controller")


def test_the_dead_mans_calls_stop_when_the_run_controller_is_killed(system, tmp_path, receivers):
    _, hook = receivers
    s = beating(system, tmp_path, hook)
    s.controller.kill()   # and waited for: it is gone
    try:
        stops_growing(lambda: len(hook.beats), "the calls to stop")
    finally:
        start_controller(s)
    grows(lambda: len(hook.beats), 2, "the calls again under a new run controller")


# --- the rules' clock: reminders (an end-to-end reminder would take its minimum of 60 s) -------------------------

def reminders(rule, record, times):
    """The kinds of messages `rules.due` gives at each of `times` (seconds after the raise) for one alarm."""
    state, said = {}, []
    for at in times:
        said.append([m.kind for m in rules.due(state, [record(at)], [rule], [], RAISED_AT + at)])
    return said


RAISED_AT = 1_800_000_000.0


def record(acked_after=None, cleared_after=None):
    def at(t):
        return {"alarm": "warm", "severity": "alarm", "raised": RAISED_AT,
                "state": "cleared" if cleared_after is not None and t >= cleared_after else "active",
                "acked": {"by": "anna"} if acked_after is not None and t >= acked_after else None}
    return at


@pytest.mark.parametrize("alarm, said", [
    (record(), [["raised"], [], ["repeat"], [], ["repeat"]]),
    (record(acked_after=100), [["raised"], [], ["repeat"], [], []]),
    (record(cleared_after=100), [["raised"], [], ["repeat"], ["cleared"], []]),
], ids=["unacknowledged", "acknowledged", "cleared"])
def test_a_reminder_comes_every_repeat_seconds_while_the_alarm_stands_unacknowledged(alarm, said):
    rule = NotifyRule("shift", repeat_s=60.0)
    assert reminders(rule, alarm, [0, 59, 60, 119, 120]) == said


def test_an_alarm_that_rose_and_cleared_while_nobody_looked_is_told_once_with_its_clearing():
    cleared = {**record(cleared_after=0)(0), "cleared": RAISED_AT + 5}
    state = {}
    said = rules.due(state, [cleared], [NotifyRule("shift")], [], RAISED_AT + 10)
    assert [(m.route, m.kind) for m in said] == [("shift", "raised")]
    assert "cleared: " in rules.text(said[0], "http://127.0.0.1:8080", "ctl")[1]
    assert rules.due(state, [cleared], [NotifyRule("shift")], [], RAISED_AT + 11) == []   # once
    assert rules.due(state, [], [NotifyRule("shift")], [], RAISED_AT + 12) == []   # its clearing was in it


def test_a_maintenance_window_of_a_program_holds_back_the_alarms_on_the_numbers_it_publishes():
    window = {"from": RAISED_AT, "until": RAISED_AT + 600, "reason": "warm-up", "programs": ["cryo"]}
    warm = record()(0)
    assert rules.due({}, [warm], [NotifyRule("shift")], [window], RAISED_AT + 1,
                     {"warm": "cryo.values.temperature"}) == []
    assert [m.kind for m in rules.due({}, [warm], [NotifyRule("shift")], [window], RAISED_AT + 1,
                                      {"warm": "vacuum.values.pressure"})] == ["raised"]


# --- damicm ---------------------------------------------------------------------------------------------------------

def send(path, *words):
    return subprocess.run([sys.executable, "send.py", "--experiment", str(path), *words], cwd=ROOT,
                          env=env_for_children(), capture_output=True, text=True, timeout=60)


def all_registered(path):
    answer = send(path, "run", "status")
    return answer.returncode == 0 and all(p["registered"] is not False
                                          for p in json.loads(answer.stdout)["programs"].values())


def published_temperature(path):
    return json.loads(send(path, "server", "_retained").stdout)["cryo.values"]["data"]["temperature"]


@pytest.fixture
def damicm_mailing(tmp_path, receivers):
    """damicm running headless, its notify routes pointed at the mailbox: (its file, its web page's address)."""
    mail, _ = receivers
    path = damicm_copy(tmp_path, holds={"ccd_warm": 20})   # longer than the cool-down at the start
    description = json.loads(path.read_text())
    web = "http://" + description["programs"]["web"]["cmd"][-1]
    description["notify"].update(routes={"shift": [mail.url("shift@example.org")],
                                         "experts": [mail.url("experts@example.org")]}, link=web)
    path.write_text(json.dumps(description))
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT, env=env_for_children(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: all_registered(path), 90, 0.5, what="damicm up")
        yield path, web
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


@pytest.mark.timeout(300)
def test_an_alarm_of_a_running_damicm_arrives_as_a_mail_with_its_subject_and_the_link_to_the_page(
        damicm_mailing, receivers):
    mail, _ = receivers
    path, web = damicm_mailing
    wait_until(lambda: published_temperature(path) < 145, 60, 0.5, what="the CCDs cold, as published")
    assert "ccd_warm" not in send(path, "run", "alarms").stdout
    # the cryocooler told to a set point it reaches only slowly: the CCDs stand well above it
    changed = send(path, "run", "set_config", "program=cryo", "set_point=100", "rate=0.1", "by=anna")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    wait_until(lambda: "[damicm] ALARM ccd_warm" in mail.subjects(), 90, 0.5, what="the alarm's mail")
    message = mail.messages[mail.subjects().index("[damicm] ALARM ccd_warm")]
    assert message["To"] == "shift@example.org"
    body = message.get_body(("plain", "html")).get_content()
    assert "CCD temperature more than 5 K above its set point" in body
    assert f"{web}/#alarms/ccd_warm" in body
    with urllib.request.urlopen(web + "/", timeout=30) as page:   # the link opens the status page
        assert page.status == 200
