"""Deeper run control through real participant processes: ordered stages and take-backs, deferrals with progress
(and a deferring participant killed), pause and resume (by a person and by an alarm), participants left out."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runcontrol.errors import Refused
from tests.helpers import ROOT, env_for_children, helper, wait_until
from tests.test_alarms import Feed, publish_until


def participant(name, record, *flags, order=None, defer_limit=None, past_limit=None, **fields):
    transitions = {k: v for k, v in (("order", order), ("defer_limit", defer_limit), ("past_limit", past_limit))
                   if v is not None}
    return helper("participant.py", name, record, *flags, client=name, participant=True,
                  **({"transitions": transitions} if transitions else {}), **fields)


def got(record, transition=None):
    lines = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return [t for t in lines if transition is None or t["transition"] == transition]


def at(record, transition):
    """When the participant was last told `transition`."""
    return got(record, transition)[-1]["at"]


def ready(s, *names):
    for name in names:
        s.wait_state(name, "RUNNING", registered=True)


def send_py(s, *words):
    return subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), *words], cwd=ROOT,
                          env=env_for_children(), capture_output=True, text=True, timeout=60)


def test_stages_go_up_by_order_and_down_in_reverse_and_a_refusal_takes_back_the_earlier_stages_latest_first(
        system, tmp_path):
    files = {name: tmp_path / f"{name}.jsonl" for name in ("a", "b", "c", "d", "e")}
    s = system({"a": participant("a", files["a"], order=1), "b": participant("b", files["b"], order=2),
                "c": participant("c", files["c"], order=2),
                "d": participant("d", files["d"], "--refuse", "begin", order=3),
                "e": participant("e", files["e"], order=4)})
    ready(s, *files)
    prepared = s.op.request("run", "prepare_run")
    assert prepared["stages"] == [["a"], ["b", "c"], ["d"], ["e"]]
    assert at(files["a"], "prepare") < min(at(files["b"], "prepare"), at(files["c"], "prepare"))
    assert max(at(files["b"], "prepare"), at(files["c"], "prepare")) < at(files["d"], "prepare") \
        < at(files["e"], "prepare")

    with pytest.raises(Refused) as refused:
        s.op.request("run", "begin_run", comment="ordered", timeout=5)
    text = str(refused.value)
    assert refused.value.code == "failed" and "at stage 3 of 4, the state stays READY" in text
    assert "d refused: d will not begin" in text and text.endswith("taken back: end to b, c; end to a")
    assert got(files["e"], "begin") == []                       # the stage after the refusal is not asked
    ends = {name: got(files[name], "end") for name in "abc"}
    assert all(len(e) == 1 and e[0]["abort"] and e[0]["reason"] == "a later stage refused" for e in ends.values())
    assert max(ends["b"][0]["at"], ends["c"][0]["at"]) < ends["a"][0]["at"]   # latest stage first
    assert s.op.request("run", "status")["state"] == "READY"

    s.op.request("run", "abort_run")
    last_end = {name: at(files[name], "end") for name in files}
    assert last_end["e"] < last_end["d"] < min(last_end["b"], last_end["c"])
    assert max(last_end["b"], last_end["c"]) < last_end["a"]   # down: higher orders first


def test_a_deferring_participant_holds_the_end_with_progress_shown_until_it_is_done(system, tmp_path):
    files = {"drain": tmp_path / "drain.jsonl", "quick": tmp_path / "quick.jsonl"}
    s = system({"drain": participant("drain", files["drain"], "--defer", "end", 8, defer_limit=60, order=1),
                "quick": participant("quick", files["quick"], order=2)})
    ready(s, "drain", "quick")
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", comment="drained")["run"]
    progress = []
    ending = s.op.start({"to": "run", "cmd": "end_run", "timeout": 1}, on_progress=progress.append)

    def held():
        s.op.poll(0.05)
        holding = s.op.request("run", "status")["transition"]
        return holding if holding and holding["holders"].get("drain", {}).get("fraction") else None
    holding = wait_until(held, 20, 0, what="drain holding the end, with its progress")
    assert holding["transition"] == "end_run" and holding["run"] == run and holding["waiting"] == ["drain"]
    assert holding["stage"] == 2 and holding["stages"] == 2 and holding["holders"]["drain"]["text"].startswith(
        "draining ")
    event = s.wait_event("event.run_progress", run=run)
    assert "end_run of run" in event["message"] and "held by drain" in event["message"]
    # the requester asked with a 1 s timeout and waits 6 s: the progress relayed to it keeps it waiting
    answer = s.op.wait(ending, 6).value()
    assert answer["state"] == "STOP" and answer["problems"] == {} and set(answer["deferred"]) == {"drain"}
    assert progress and progress[-1]["holders"]["drain"]["text"].startswith("draining ")
    assert at(files["quick"], "end") < at(files["drain"], "end")     # down: order 2 before order 1
    record = s.op.request("run", "runs", n=1)[-1]
    assert record["result"] == "ended" and set(record["deferred"]) == {"drain"}
    assert s.op.request("run", "status")["transition"] is None


def test_a_deferring_participant_killed_no_longer_holds_the_end_which_goes_on_named(system, tmp_path):
    record = tmp_path / "drain.jsonl"
    s = system({"drain": participant("drain", record, "--defer", "end", 0, defer_limit=600, restart="never"),
                "quick": participant("quick", tmp_path / "quick.jsonl")})
    ready(s, "drain", "quick")
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run")["run"]
    ending = s.op.start({"to": "run", "cmd": "end_run", "timeout": 2})
    wait_until(lambda: s.op.poll(0.05) * 0 or s.events.find("event.run_progress", run=run), 20, 0,
               what="drain deferring")
    os.kill(s.program("drain")["pid"], signal.SIGKILL)
    answer = s.op.wait(ending, 60).value()   # the server's timeout (5 s) makes it lost: far within its 600 s
    assert answer["state"] == "STOP" and answer["problems"]["drain"].startswith("lost while deferring")
    logged = s.op.request("run", "runs", n=1)[-1]
    assert logged["result"] == "ended" and logged["problems"]["drain"].startswith("lost while deferring")


def test_past_its_limit_a_deferral_fails_the_transition_or_is_gone_past_and_a_part_left_out_is_not_asked(
        system, tmp_path):
    files = {n: tmp_path / f"{n}.jsonl" for n in ("goer", "stuck")}
    s = system({"goer": participant("goer", files["goer"], "--defer", "end", 0, defer_limit=2, past_limit="go_on",
                                    order=1),
                "stuck": participant("stuck", files["stuck"], "--defer", "end", 0, defer_limit=2, order=2)})
    ready(s, "goer", "stuck")
    s.op.request("run", "prepare_run")
    s.op.request("run", "begin_run")
    with pytest.raises(Refused) as refused:
        s.op.call({"to": "run", "cmd": "end_run", "timeout": 1}, 30)
    assert "stuck deferred past its limit of 2 s (draining" in str(refused.value)
    assert "the state stays RUN" in str(refused.value) and got(files["goer"], "end") == []
    aborted = s.op.call({"to": "run", "cmd": "abort_run", "timeout": 1}, 30)   # it goes through, deferrals named
    assert aborted["state"] == "STOP"
    assert aborted["problems"]["goer"].startswith("deferred past its limit of 2 s") and \
        aborted["problems"]["goer"].endswith("gone on without it")

    with pytest.raises(Refused) as refused:
        s.op.request("run", "exclude", program="nobody")
    assert refused.value.code == "no_such_client" and "goer, stuck" in str(refused.value)
    before = {name: (s.program(name)["pid"], s.program(name)["restarts"]) for name in files}
    left = send_py(s, "run", "exclude", "program=stuck", "why=keeps deferring", "by=carla")
    assert left.returncode == 0, left.stderr
    asked = len(got(files["stuck"]))
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run")["run"]
    with pytest.raises(Refused) as refused:
        s.op.request("run", "exclude", program="goer")
    assert refused.value.code == "bad_state"
    ended = s.op.call({"to": "run", "cmd": "end_run", "timeout": 1}, 30)
    assert ended["state"] == "STOP" and ended["participants"] == ["goer"]
    assert ended["problems"]["goer"].endswith("gone on without it")
    assert len(got(files["stuck"])) == asked   # not asked, and its program left running, never restarted
    assert {name: (s.program(name)["pid"], s.program(name)["restarts"]) for name in files} == before
    record = s.op.request("run", "runs", n=1)[-1]
    assert record["run"] == run and record["excluded"]["stuck"]["why"] == "keeps deferring"
    assert record["excluded"]["stuck"]["by"] == "carla"
    catalogued = wait_until(lambda: s.op.request("run", "record", number=run), 20, what="the run's catalog record")
    assert catalogued["excluded"]["stuck"]["why"] == "keeps deferring" and set(catalogued["deferred"]) == {"goer"}
    assert "run.stuck.absent" not in {a["alarm"] for a in s.op.request("run", "alarms")["alarms"]}

    s.replace_controller()   # the list of those left out survives the run controller
    ready(s, "goer", "stuck")
    assert set(s.op.request("run", "status")["excluded"]) == {"stuck"}
    assert s.op.request("run", "include", program="stuck")["excluded"] == {}
    assert s.op.request("run", "prepare_run")["participants"] == ["goer", "stuck"]
    s.op.call({"to": "run", "cmd": "abort_run", "timeout": 1}, 30)


def test_pause_and_resume_from_send_py_and_the_operator_are_logged_with_their_durations(system, tmp_path):
    from runcontrol.control.operator import Operator
    record = tmp_path / "p.jsonl"
    s = system({"p": participant("p", record)})
    ready(s, "p")
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", comment="paused twice")["run"]
    paused = send_py(s, "run", "pause_run", "why=fill the dewar", "by=dana")
    assert paused.returncode == 0 and '"PAUSED"' in paused.stdout, paused.stderr
    assert s.wait_event("event.run_state", state="PAUSED", run=run)["message"] == f"Paused run {run}: fill the dewar"
    with pytest.raises(Refused) as refused:
        s.op.request("run", "pause_run")
    assert refused.value.code == "bad_state" and "resume_run, end_run or abort_run" in str(refused.value)
    assert s.op.request("run", "runs", n=1)[-1]["pauses"][0]["why"] == "fill the dewar"
    assert send_py(s, "run", "resume_run").returncode == 0
    with Operator(experiment=str(s.path), name="op-eve") as op:
        assert op.pause_run(why="look at the noise")["state"] == "PAUSED"
        time.sleep(0.2)
        assert op.resume_run()["state"] == "RUN"
        ended = op.end_run()
    assert ended["state"] == "STOP"
    assert [t["transition"] for t in got(record)] == ["prepare", "begin", "pause", "resume", "pause", "resume", "end"]
    final = s.op.request("run", "runs", n=1)[-1]
    pauses = final["pauses"]
    assert [p["why"] for p in pauses] == ["fill the dewar", "look at the noise"]
    assert pauses[0]["by"]["operator"] == "dana" and pauses[1]["by"]["client"] == "op-eve"
    assert all(p["until"] > p["at"] and p["duration"] == pytest.approx(p["until"] - p["at"], abs=0.01)
               for p in pauses)
    assert final["paused_s"] == pytest.approx(sum(p["duration"] for p in pauses), abs=0.01)
    assert final["live_s"] == pytest.approx(final["duration"] - final["paused_s"], abs=0.01)


def test_an_alarm_pauses_the_run_and_resumes_it_once_it_cleared_and_was_acknowledged(system, tmp_path):
    record = tmp_path / "p.jsonl"
    s = system({"p": participant("p", record)}, alarms={
        "warm": {"value": "feed.values.t", "above": 10, "for": 0, "message": "too warm to take data",
                 "actions": ["pause_run"], "resume": "acked"}})
    ready(s, "p")
    with Feed(s.path) as feed:
        publish_until(s, feed, 5, lambda: True)
        s.op.request("run", "prepare_run")
        run = s.op.request("run", "begin_run")["run"]
        publish_until(s, feed, 12, lambda: s.events.find("event.run_state", state="PAUSED", run=run))
        assert s.op.request("run", "status")["current_run"]["suspended_by"] == "warm"
        publish_until(s, feed, 5, lambda: s.events.find("event.alarm_cleared", alarm="warm"))
        s.op.poll(1.5)   # cleared, not acknowledged: it stays paused
        assert s.op.request("run", "status")["state"] == "PAUSED"
        s.op.request("run", "ack", alarm="warm", by="erin")
        s.wait_event("event.run_state", state="RUN", run=run)
    pause = s.op.request("run", "runs", n=1)[-1]["pauses"][0]
    assert pause["by"]["alarm"] == "warm" and pause["why"] == "alarm warm: too warm to take data" and pause["until"]
    assert [t["transition"] for t in got(record)][-2:] == ["pause", "resume"]
    s.op.request("run", "end_run")


def test_a_stage_larger_than_the_servers_pending_limit_is_asked_a_window_at_a_time(system, tmp_path):
    names = ("w1", "w2", "w3", "w4", "w5")
    s = system({name: participant(name, tmp_path / f"{name}.jsonl") for name in names}, max_pending=4)
    ready(s, *names)   # the run controller may have 4 requests awaiting answers: 2 go to a stage at once
    assert s.op.request("run", "prepare_run")["problems"] == {}
    assert s.op.request("run", "begin_run")["participants"] == list(names)
    assert s.op.request("run", "end_run")["problems"] == {}
    assert all([t["transition"] for t in got(tmp_path / f"{name}.jsonl")] == ["prepare", "begin", "end"]
               for name in names)


def test_in_a_paused_run_a_refused_end_is_taken_back_to_paused(system, tmp_path):
    files = {n: tmp_path / f"{n}.jsonl" for n in ("first", "balky")}
    s = system({"first": participant("first", files["first"], order=2),
                "balky": participant("balky", files["balky"], "--refuse", "end", order=1)})
    ready(s, "first", "balky")
    s.op.request("run", "prepare_run")
    s.op.request("run", "begin_run")
    s.op.request("run", "pause_run", why="a look")
    with pytest.raises(Refused) as refused:
        s.op.request("run", "end_run")
    assert "at stage 2 of 2, the state stays PAUSED" in str(refused.value)
    assert str(refused.value).endswith("taken back: begin to first; pause to first")
    told = got(files["first"])
    assert [t["transition"] for t in told][-3:] == ["end", "begin", "pause"] and told[-1]["rejoin"]
    s.op.call({"to": "run", "cmd": "abort_run", "timeout": 1}, 30)


def test_a_deferral_gives_no_one_else_of_its_stage_more_time(system, tmp_path):
    files = {n: tmp_path / f"{n}.jsonl" for n in ("slow", "mute")}
    s = system({"slow": participant("slow", files["slow"], "--defer", "end", 0, defer_limit=600),
                "mute": participant("mute", files["mute"], "--silent", "end")})
    ready(s, "slow", "mute")
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run")["run"]
    s.op.start({"to": "run", "cmd": "end_run", "timeout": 1})

    def mute_given_up():
        holding = s.op.request("run", "status")["transition"]
        return holding and holding["waiting"] == ["slow"] and "slow" in holding["holders"]
    wait_until(mute_given_up, 30, what="mute given up at its 1 s while slow holds the stage")
    os.kill(s.program("slow")["pid"], signal.SIGKILL)   # the stage ends: slow lost, mute silent
    wait_until(lambda: s.op.request("run", "runs", n=1)[-1].get("run") == run
               and s.op.request("run", "status")["transition"] is None, 30)
    assert s.op.request("run", "status")["state"] == "RUN"


def test_a_participant_excluded_with_its_program_stopped_stays_stopped_when_the_run_controller_restarts(
        system, tmp_path):
    s = system({"a": participant("a", tmp_path / "a.jsonl"), "b": participant("b", tmp_path / "b.jsonl")})
    ready(s, "a", "b")
    s.op.request("run", "exclude", program="b", why="board 2 away", stop=True)
    s.wait_state("b", "STOPPED")
    s.replace_controller()
    ready(s, "a")
    assert s.program("b")["state"] == "STOPPED" and s.op.request("run", "prepare_run")["participants"] == ["a"]
    s.op.request("run", "abort_run")
    s.op.request("run", "include", program="b")
    ready(s, "b")
