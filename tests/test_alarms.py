"""Alarms in a real system: declared conditions raised after their hold, their actions (a line in the run
controller's log, a run ended, a command sent, a value published), cleared, acknowledged, kept through a SIGKILLed
run controller; built-in alarms (a program FATAL or down, a participant absent), none before its hold; what
`send.py` and `status.py` show, in the view's colours."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from runcontrol.client.client import Client
from runcontrol.control.operator import Operator
from runcontrol.errors import Refused
from tests.helpers import ROOT, env_for_children, helper, wait_until

HOT_HOLD_S = 1.5
ABSENT_S, DOWN_S = 10, 30   # the README's holds of run.<client>.absent and program.<name>.down


def participant(name, record):
    return helper("participant.py", name, record, client=name, participant=True)


def standing(s):
    return {a["alarm"]: a for a in s.op.request("run", "alarms")["alarms"]}


def raised_count(s, alarm):
    return sum(1 for topic, e in list(s.events.items) if topic == "event.alarm_raised" and e.get("alarm") == alarm)


class Feed(threading.Thread):
    """A client `feed` in a thread of its own that publishes feed.values.t every 0.2 s once `t` is set, whatever
    the test waits for meanwhile (a restart, a subprocess)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.t = path, None
        self.stopping, self.ready = threading.Event(), threading.Event()

    def run(self):
        with Client("feed", experiment=str(self.path)) as client:
            client.connect(20)
            self.ready.set()
            while not self.stopping.is_set():
                if self.t is not None:
                    client.publish("values", {"t": self.t}, retain=True)
                client.poll(0.2)

    def __enter__(self):
        self.start()
        assert self.ready.wait(30), "the feed did not connect"
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(10)


def publish_until(s, feed, t, condition, timeout_s=30):
    """Publish `t` until `condition()` holds; the time the first publication went out at the latest."""
    first = time.time()
    feed.t = t
    wait_until(lambda: s.op.poll(0.05) * 0 or condition(), timeout_s, 0, what=f"after publishing {t}")
    return first


def test_declared_alarms_raise_act_clear_and_are_acknowledged_through_a_controller_restart(system, tmp_path):
    record = tmp_path / "pa.jsonl"
    s = system({"pa": participant("pa", record), "echo": helper("echo_client.py", "echo", client="echo")}, alarms={
        "hot": {"value": "feed.values.t", "above": 10, "for": HOT_HOLD_S, "message": "feed too hot",
                "actions": ["log", "publish", "end_run", {"send": {"to": "echo", "cmd": "echo", "why": "hot"}}]},
        "quiet": {"value": "feed.values.t", "missing": 3, "severity": "warning", "actions": ["publish"]}})
    quiet = s.wait_event("event.alarm_raised", alarm="quiet")   # nothing published since the start
    assert quiet["severity"] == "warning" and "feed.values.t not published for 3 s" in quiet["message"]
    for name in ("pa", "echo"):
        s.wait_state(name, "RUNNING", registered=True)
    with Feed(s.path) as feed:
        publish_until(s, feed, 5, lambda: s.events.find("event.alarm_cleared", alarm="quiet"))
        assert standing(s)["quiet"]["state"] == "cleared" and standing(s)["quiet"]["acked"] is None  # until acked
        s.op.request("run", "prepare_run")
        run = s.op.request("run", "begin_run", comment="alarm test")["run"]

        first = publish_until(s, feed, 12, lambda: s.events.find("event.alarm_raised", alarm="hot"))
        hot = s.events.find("event.alarm_raised", alarm="hot")
        assert hot["raised"] - first >= HOT_HOLD_S and hot["value"] == 12.0 and hot["severity"] == "alarm"
        # its actions: the run ended with the alarm as reason, a command sent, the alarm published
        ended = s.wait_event("event.run_state", state="STOP", run=run)
        assert "alarm hot: feed too hot" in ended["message"]
        outcome = s.op.request("run", "runs", n=1)[-1]
        assert outcome["result"] == "ended by alarm" and outcome["why"] == "alarm hot: feed too hot"
        assert [t["reason"] for t in map(json.loads, record.read_text().splitlines()) if t["transition"] == "end"] \
            == ["alarm hot: feed too hot"]
        sent = wait_until(lambda: [e for e in s.op.request("run", "alarms", log=50)["log"] if e["change"] == "send"])
        assert sent[0]["ok"] and sent[0]["result"] == {"why": "hot"}
        assert s.op.request(None, "_retained", prefix="run.alarm.hot")["run.alarm.hot"]["data"]["active"] == 1
        logged = s.controller.log.read_text()   # the `log` action: a line in the run controller's log, for hot only
        assert "ALARM hot: feed too hot (value 12.0)" in logged and "quiet:" not in logged

        publish_until(s, feed, 5, lambda: s.events.find("event.alarm_cleared", alarm="hot"))
        assert standing(s)["hot"]["state"] == "cleared"
        acked = s.op.request("run", "ack", alarm="hot", by="alice")["acked"][0]
        assert acked["acked"]["by"] == "alice"
        assert s.wait_event("event.alarm_acked", alarm="hot")["acked"]["by"] == "alice"
        assert "hot" not in standing(s)   # cleared and acknowledged: gone

        publish_until(s, feed, 13, lambda: raised_count(s, "hot") == 2)
        before = standing(s)["hot"]
        s.replace_controller()
        after = standing(s)["hot"]
        assert (after["raised"], after["state"], after["acked"]) == (before["raised"], "active", None)
        publish_until(s, feed, 5, lambda: len([e for t, e in list(s.events.items) if t == "event.alarm_cleared"
                                               and e.get("alarm") == "hot"]) == 2, 60)
        assert raised_count(s, "hot") == 2   # the new controller did not raise it again
        with pytest.raises(Refused) as refused:
            s.op.request("run", "ack", alarm="nothing")
        assert refused.value.code == "no_such_alarm" and "standing: hot, quiet" in str(refused.value)

        listed = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "alarms"], cwd=ROOT,
                                env=env_for_children(), capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "feed too hot" in listed.stdout, listed.stderr
        acked = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "ack", "all=true",
                                "by=bob"], cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=60)
        assert acked.returncode == 0, acked.stderr
        assert standing(s) == {}
    changes = [(e["change"], e["alarm"]) for e in s.op.request("run", "alarms", log=100)["log"] if e["change"] != "send"
               and e["change"] != "end_run"]
    assert changes == [("raised", "quiet"), ("cleared", "quiet"), ("raised", "hot"), ("cleared", "hot"),
                       ("acked", "hot"), ("raised", "hot"), ("cleared", "hot"), ("acked", "hot"), ("acked", "quiet")]


RED_BACKGROUND, YELLOW = "41", "33"   # ANSI colours (SGR parameters)


def top_line_in_colour(s):
    """The first line `status.py --once` prints, in colour as on a terminal: (its text, its SGR parameters)."""
    once = subprocess.run([sys.executable, "status.py", "--experiment", str(s.path), "--once"], cwd=ROOT,
                          env={**env_for_children(), "FORCE_COLOR": "1", "COLUMNS": "300"}, capture_output=True,
                          text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    line = once.stdout.splitlines()[0]
    start = re.match(r"\x1b\[([\d;]*)m", line)
    assert start, f"no colour at the start of {line!r}"
    return re.sub(r"\x1b\[[\d;]*m", "", line), set(start.group(1).split(";"))


def test_a_fatal_program_raises_a_built_in_alarm_shown_on_top_of_the_view(system):
    s = system({"flaky": helper("crash_after.py", 0.1, 3, max_restarts=1, restart_window=60,
                                backoff={"initial": 0.1, "max": 0.2, "factor": 2}),
                "steady": helper("crash_after.py", 600)})
    alarm = s.wait_event("event.alarm_raised", alarm="program.flaky.fatal")
    assert alarm["severity"] == "alarm" and "flaky is FATAL" in alarm["message"]
    text, colours = top_line_in_colour(s)
    assert text.startswith("ALARM") and "flaky is FATAL" in text
    assert RED_BACKGROUND in colours, colours   # red until acknowledged
    with Operator(experiment=str(s.path)) as op:
        assert op.alarms()[0]["alarm"] == "program.flaky.fatal"
        assert op.ack("program.flaky.fatal", by="carol")[0]["acked"]["by"] == "carol"
        assert op.alarms(log=5)["log"][-1]["change"] == "acked"
    text, colours = top_line_in_colour(s)
    assert "flaky is FATAL" in text and "acked by carol" in text
    assert YELLOW in colours and RED_BACKGROUND not in colours, colours   # yellow after
    s.op.request("run", "stop", program="flaky")   # FATAL -> STOPPED: the condition clears; acknowledged: gone
    s.wait_event("event.alarm_cleared", alarm="program.flaky.fatal")
    assert "program.flaky.fatal" not in standing(s)


def test_a_participant_gone_during_a_run_raises_a_built_in_alarm(system, tmp_path):
    s = system({"px": helper("participant.py", "px", tmp_path / "px.jsonl", client="px", participant=True, restart="never")})
    s.wait_state("px", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run")["run"]
    os.kill(s.program("px")["pid"], signal.SIGKILL)   # not restarted: it stays away from the run
    alarm = s.wait_event("event.alarm_raised", alarm="run.px.absent", timeout_s=40)
    assert alarm["message"] == f"px takes part in run {run} but is not registered"
    gone = s.events.find("event.client_lost", name="px") or s.events.find("event.client_left", name="px")
    # The run controller learns of the loss from the server, at this event or later; `raised` is rounded to the ms.
    assert alarm["raised"] >= gone["ts"] + ABSENT_S - 0.001, (alarm, gone)
    s.op.request("run", "abort_run")   # no run: the condition clears
    s.wait_event("event.alarm_cleared", alarm="run.px.absent")


@pytest.mark.timeout(180)
def test_a_program_that_keeps_failing_to_start_raises_down_after_its_hold(system):
    before = time.time()   # it cannot have begun trying earlier
    s = system({"broken": helper("crash_after.py", 0, client="broken", max_restarts=1000, restart_window=60,
                                 backoff={"initial": 0.5, "max": 1, "factor": 2})})
    alarm = s.wait_event("event.alarm_raised", alarm="program.broken.down", timeout_s=DOWN_S + 60)
    assert alarm["severity"] == "warning" and alarm["message"].startswith("broken has not got running for 30 s")
    assert alarm["raised"] >= before + DOWN_S, (alarm, before)   # not before it tried for 30 s
    assert s.program("broken")["state"] in ("STARTING", "BACKOFF")   # still trying: not FATAL, no restart limit
    s.op.request("run", "stop", program="broken")
    s.wait_event("event.alarm_cleared", alarm="program.broken.down")


def test_a_reload_brings_new_alarms_and_drops_removed_ones(system):
    s = system({"steady": helper("crash_after.py", 600)})
    description = json.loads(s.path.read_text())
    description["alarms"] = {"silent": {"value": "feed.values.t", "missing": 1, "severity": "warning"}}
    s.path.write_text(json.dumps(description))
    s.op.request("run", "reload")
    assert s.wait_event("event.alarm_raised", alarm="silent")["severity"] == "warning"
    description["alarms"] = {}
    s.path.write_text(json.dumps(description))
    s.op.request("run", "reload")
    s.wait_event("event.alarm_cleared", alarm="silent")   # no longer declared: its condition is gone
