"""Notifications as they reach a person: a real SMTP server (aiosmtpd) and a real HTTP receiver (aiohttp) on
loopback stand for the mail and the chat service; a real notifier, run controller, server and instrument."""

import asyncio
import email
import email.policy
import threading

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.helpers import free_port, wait_until

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
    """An HTTP receiver on loopback (what a chat service's webhook is): keeps each JSON body, or answers 500."""

    def __init__(self):
        self.bodies, self.status = [], 200
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _serve(self, ready):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._take)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    async def _take(self, request):
        if self.status != 200:
            return web.Response(status=self.status, text="the test says no")
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    def url(self):
        return f"json://127.0.0.1:{self.port}/hook"

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
    return {"cryo": {"cmd": ["python", "-m", "clients.sim.cryo", "--name", "cryo", "--start", str(COLD),
                             "--rate", "200"], "client": "cryo"},
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
    s.op.request("cryo", "set_point", kelvin=WARM)
    wait_until(lambda: mail.messages, 60, 0.2, what="the alarm's mail")
    first = mail.messages[0]
    assert first["Subject"] == "[ctl] ALARM warm" and first["To"] == "shift@example.org"
    body = first.get_body(("plain", "html")).get_content()
    assert "CCDs too warm" in body and "value: " in body and "raised: " in body
    assert "http://127.0.0.1:8080/#alarms/warm" in body
    wait_until(lambda: hook.bodies, 60, 0.2, what="the escalation to the experts' hook")
    assert hook.titles() == ["[ctl] unacknowledged: ALARM warm"]
    s.op.request("run", "ack", alarm="warm", by="anna")
    s.op.request("cryo", "set_point", kelvin=COLD)
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
    answer = s.op.call({"to": "run", "cmd": "notify_test", "route": "shift", "by": "anna"}, 40)
    assert [(r["url"], r["ok"]) for r in answer["sent"]] == [(0, True), (1, False)]
    assert mail.subjects() == ["[ctl] test: WARNING test"]
    assert "a test message asked by anna" in mail.messages[0].get_body(("plain",)).get_content()
    pending = s.op.request("run", "notifications")["pending"]
    assert [(p["kind"], p["attempts"]) for p in pending] == [("test", 1)]   # the failed one is tried again
    hook.status = 200
    wait_until(lambda: hook.bodies, 60, 0.2, what="the retry to arrive")
    assert s.op.request("run", "notifications")["pending"] == []
