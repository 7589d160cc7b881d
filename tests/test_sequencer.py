"""The sequencer as operators use it: a real sequencer program, run controller, server and participants; sequences
queued and driven from the operator client, runs checked in the run log."""

import json
import os
import signal
import subprocess
import sys

import pytest

from runcontrol.control.operator import Operator
from runcontrol.errors import Refused, RequestFailed
from tests.helpers import ROOT, damicm_copy, env_for_children, helper, wait_until
from tests.test_cli import run_tool
from tests.test_view import view_once


def sequencer_program(tmp_path, *extra):
    return {"cmd": ["python", "-m", "clients.sequencer", "--name", "sequencer", "--folder", str(tmp_path / "sequences"),
                    "--state", str(tmp_path / "seqstate"), *extra], "client": "sequencer"}


def write_sequence(tmp_path, name, steps, **more):
    folder = tmp_path / "sequences"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "steps": steps, **more}))


def records(record):
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.fixture
def bench(system, tmp_path):
    """A participant with settings (cam), a cryo publishing its temperature, and the sequencer."""
    def make(**extra_programs):
        s = system({"cam": helper("configurable.py", "cam", tmp_path / "cam.jsonl", client="cam"),
                    "cryo": {"cmd": ["python", "-m", "clients.sim.cryo", "--name", "cryo", "--start", "150",
                                     "--rate", "50"], "client": "cryo"},
                    "sequencer": sequencer_program(tmp_path), **extra_programs})
        for name in ("cam", "cryo", "sequencer"):
            s.wait_state(name, "RUNNING", registered=True)
        return s
    return make


def seq(s, cmd, timeout=15, **fields):
    return s.op.call({"to": "sequencer", "cmd": cmd, **fields}, timeout)


def wait_sequencer(s, predicate, timeout_s=90, what="the sequencer"):
    def check():
        try:
            return predicate(seq(s, "status"))
        except RequestFailed:   # a sequencer just killed, not yet replaced
            return None
    return wait_until(check, timeout_s, 0.2, what=what)


def test_a_scan_sets_waits_and_takes_each_run_once_tagged_with_its_loop_values(bench, tmp_path):
    write_sequence(tmp_path, "scan", [
        {"for": {"gain": [2, 3], "steps": [
            {"set": {"program": "cam", "values": {"gain": "{gain}"}}},
            {"wait": {"value": "cryo.values.temperature", "below": 200, "for": 0.5, "timeout": 60}},
            {"repeat": {"times": 2, "as": "n", "steps": [
                {"run": {"comment": "gain {gain}, take {n}", "params": {"gain": "{gain}"}, "seconds": 1}}]}}]}}])
    s = bench()
    loaded = seq(s, "load", sequence="scan")
    assert loaded["steps"] == 8 and loaded["name"] == "scan"
    entry = seq(s, "queue", sequence="scan", by="alice")
    assert entry["state"] == "waiting" and entry["steps"] == 8
    seq(s, "start")
    wait_sequencer(s, lambda st: st["finished"] and st["finished"][-1]["state"] == "done", what="the scan to end")
    runs = [r for r in s.op.request("run", "runs") if r.get("sequence")]
    assert [(r["comment"], r["result"], r["sequence"]["loop"]) for r in runs] == [
        ("gain 2, take 1", "ended", {"gain": 2, "n": 1}), ("gain 2, take 2", "ended", {"gain": 2, "n": 2}),
        ("gain 3, take 1", "ended", {"gain": 3, "n": 1}), ("gain 3, take 2", "ended", {"gain": 3, "n": 2})]
    assert all(r["by"] == "sequencer" and r["sequence"]["sequence"] == "scan" for r in runs)
    assert len({r["run"] for r in runs}) == 4
    begun = [t for t in records(tmp_path / "cam.jsonl") if t.get("transition") == "begin"]
    assert [t["settings"]["gain"] for t in begun] == [2, 2, 3, 3]   # each run with the setting of its step
    sets = [e for e in s.op.request("run", "config_log", program="cam") if e["by"].startswith("sequencer:")]
    assert [(e["changes"], e["accepted"]) for e in sets] == [({"gain": [1, 2]}, True), ({"gain": [2, 3]}, True)]
    s.wait_event("event.sequence_done", sequence="scan")
    steps = [obj["index"] for topic, obj in s.events.items if topic == "event.sequence_step"]
    assert steps == list(range(8))
    view = "\n".join(view_once(s.path))   # the view's event lines
    assert "Sequence scan (q1) done: 8 steps" in view and "scan step 8/8: run (gain=3, n=2)" in view


def test_bad_sequences_are_refused_with_every_path(bench, tmp_path):
    write_sequence(tmp_path, "loop_a", [{"call": {"sequence": "loop_b"}}])
    write_sequence(tmp_path, "loop_b", [{"call": {"sequence": "loop_a"}}])
    write_sequence(tmp_path, "broken", [{"run": {"seconds": -1}}, {"jump": {}},
                                        {"for": {"v": [], "steps": [{"pause": {}}]}},
                                        {"set": {"program": "cam", "values": {"gain": "{nope}"}}}])
    write_sequence(tmp_path, "wrong", [{"set": {"program": "nobody", "values": {"x": 1}}},
                                       {"set": {"program": "cam", "values": {"gain": 99}}},
                                       {"wait": {"value": "cryo.values.nothing", "above": 1}}])
    s = bench()
    with pytest.raises(Refused) as refused:
        seq(s, "queue", sequence="loop_a")
    assert refused.value.code == "bad_field" and "circle: loop_a -> loop_b -> loop_a" in str(refused.value)
    with pytest.raises(Refused) as refused:
        seq(s, "load", sequence="broken")
    text = str(refused.value)
    for where in ("steps.0.run.seconds", "steps.1: 'jump' is no kind of step", "steps.2.for.v: a loop over nothing",
                  "steps.3.set: {nope} names no variable"):
        assert where in text, text
    with pytest.raises(Refused) as refused:
        seq(s, "queue", sequence="absent")
    assert "no sequence 'absent'" in str(refused.value)
    wait_until(lambda: s.op.request(None, "_retained", prefix="cryo."), 20, 0.2)
    verdict = seq(s, "dry_run", sequence="wrong")
    assert not verdict["ok"]
    problems = "\n".join(verdict["problems"])
    assert "wrong.steps.0.set: no program 'nobody'" in problems
    assert "wrong.steps.1.set: cam.gain: 99 is greater than the maximum of 10" in problems
    assert "wrong.steps.2.wait: no program has published 'cryo.values.nothing'" in problems
    with pytest.raises(Refused) as refused:   # what cannot come right by itself is refused at once
        seq(s, "queue", sequence="wrong")
    text = str(refused.value)
    assert "does not fit the experiment, nothing queued: 2 problem(s)" in text and "cam.gain: 99" in text
    assert "wrong.steps.0.set: no program 'nobody'" in text and "cryo.values.nothing" not in text
    assert seq(s, "status")["queue"] == []   # nothing bad was queued
    for cmd, fields, field in [("pause", {"at_once": "yes"}, "'at_once'"), ("pause", {"why": 7}, "'why'"),
                               ("abort", {"why": "x" * 501}, "'why'"), ("log", {"n": -1}, "'n'"),
                               ("queue", {"sequence": "wrong", "variables": [1]}, "'variables'")]:
        with pytest.raises(Refused) as refused:
            seq(s, cmd, **fields)
        assert refused.value.code == "bad_field" and field in str(refused.value), (cmd, str(refused.value))


def test_pause_at_once_ends_the_run_and_resume_takes_the_step_again_skip_and_abort(bench, tmp_path):
    write_sequence(tmp_path, "long", [{"run": {"comment": "one", "seconds": 600}},
                                      {"run": {"comment": "two", "seconds": 600}},
                                      {"run": {"comment": "three", "seconds": 600}}])
    s = bench()
    seq(s, "queue", sequence="long")
    seq(s, "start")
    wait_sequencer(s, lambda st: st["current"] and st["current"]["phase"] == "running", what="the first run")
    first = s.op.request("run", "status")["run"]
    with Operator(experiment=str(s.path)) as op:   # the operator API
        paused = op.sequences.pause(at_once=True, why="cryo check")
        assert paused["state"] in ("pausing", "paused") and paused["paused"]["why"] == "cryo check"
        wait_until(lambda: s.op.request("run", "status")["state"] == "STOP", 30, 0.2, what="the run to end")
        assert s.op.request("run", "runs")[-1]["result"] == "ended"
        with pytest.raises(Refused) as refused:
            op.sequences.pause()
        assert refused.value.code == "bad_state" and "already paused: cryo check" in str(refused.value)
        op.sequences.resume()
    wait_sequencer(s, lambda st: st["current"]["phase"] == "running" and st["current"]["run"] != first,
                   what="step one taken again")
    assert s.op.request("run", "status")["current_run"]["comment"] == "one"
    skipped = run_tool("send.py", "--experiment", s.path, "sequencer", "skip")   # and send.py
    assert skipped.returncode == 0, skipped.stderr
    wait_sequencer(s, lambda st: st["current"]["index"] == 1 and st["current"]["phase"] == "running",
                   what="step two")
    aborted = run_tool("send.py", "--experiment", s.path, "sequencer", "abort", "why=enough")
    assert aborted.returncode == 0 and json.loads(aborted.stdout)["current"]["index"] == 1, aborted.stderr
    wait_sequencer(s, lambda st: st["finished"] and st["finished"][-1]["state"] == "aborted", what="the abort")
    runs = s.op.request("run", "runs")
    assert [(r["comment"], r["result"]) for r in runs if r.get("sequence")] == [
        ("one", "ended"), ("one", "ended"), ("two", "aborted")]
    assert s.op.request("run", "status")["state"] == "STOP"
    assert seq(s, "status")["state"] == "stopped"


def test_a_sequencer_killed_at_any_phase_takes_each_run_once(bench, tmp_path):
    write_sequence(tmp_path, "many", [{"repeat": {"times": 6, "as": "i", "steps": [
        {"set": {"program": "cam", "values": {"threshold": "{i}"}}},
        {"run": {"comment": "take {i}", "seconds": 0.5}}]}}])
    s = bench()
    seq(s, "queue", sequence="many")
    seq(s, "start")
    kills = 0
    for _ in range(8):   # a SIGKILL wherever it stands, then the supervisor starts another
        wait_sequencer(s, lambda st: st["current"] is not None or st["finished"], what="the sequence to move")
        if seq(s, "status")["finished"]:
            break
        os.kill(s.program("sequencer")["pid"], signal.SIGKILL)
        kills += 1
        s.wait_state("sequencer", "RUNNING", registered=True, timeout_s=30)
    wait_sequencer(s, lambda st: st["finished"] and st["finished"][-1]["state"] == "done", 180, what="the end")
    assert kills >= 1
    runs = [r for r in s.op.request("run", "runs", n=100) if r.get("sequence")]
    assert [r["comment"] for r in runs if r["result"] == "ended"] == [f"take {i}" for i in range(1, 7)]
    assert len({r["sequence"]["step"] for r in runs}) == len(runs)   # no step took two runs
    sets = [e for e in s.op.request("run", "config_log", program="cam", n=100) if e["by"].startswith("sequencer:")]
    assert len(sets) == len({e["by"] for e in sets}) == 6   # each setting applied once


def test_a_sequence_cannot_change_a_frozen_setting_during_a_run_it_pauses_with_the_reason(bench, tmp_path):
    write_sequence(tmp_path, "tune", [{"set": {"program": "cam", "values": {"gain": 3}}}])
    s = bench()
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", comment="operator's own")["run"]
    seq(s, "queue", sequence="tune")
    seq(s, "start")
    status = wait_sequencer(s, lambda st: st["state"] == "paused" and st, what="the refusal")
    assert "step 1 (set) failed: set_config cam:" in status["paused"]["why"]
    assert "gain" in status["paused"]["why"] and f"run {run}" in status["paused"]["why"]
    assert s.op.request("run", "config", program="cam")["values"]["gain"] == 1
    s.op.request("run", "end_run")
    seq(s, "resume")   # the step is taken again, now between runs
    wait_sequencer(s, lambda st: st["finished"] and st["finished"][-1]["state"] == "done", what="the setting")
    assert s.op.request("run", "config", program="cam")["values"]["gain"] == 3


def test_an_alarm_that_asks_for_a_retry_ends_the_run_holds_the_step_until_acknowledged_then_takes_it_again(
        system, tmp_path):
    write_sequence(tmp_path, "watched", [{"run": {"comment": "long", "seconds": 600}}],
                   on_alarm={"alarms": {"hot": "retry"}, "suspend": ["hot"]})
    s = system({"cam": helper("configurable.py", "cam", tmp_path / "cam.jsonl", client="cam"),
                "cryo": {"cmd": ["python", "-m", "clients.sim.cryo", "--name", "cryo", "--start", "150",
                                 "--rate", "100"], "client": "cryo"},
                "sequencer": sequencer_program(tmp_path)},
               alarms={"hot": {"value": "cryo.values.temperature", "above": 200, "message": "too warm",
                               "actions": ["log"]}})
    for name in ("cam", "cryo", "sequencer"):
        s.wait_state(name, "RUNNING", registered=True)
    seq(s, "queue", sequence="watched")
    seq(s, "start")
    first = wait_sequencer(s, lambda st: st["current"] and st["current"]["phase"] == "running" and st)["current"]
    s.op.request("cryo", "set_point", kelvin=250)
    wait_until(lambda: s.op.request("run", "runs")[-1]["result"] == "aborted", 60, 0.2, what="the run aborted")
    held = wait_sequencer(s, lambda st: "hot" in (st["current"]["waiting_for"] or "") and st, what="the hold")
    assert held["current"]["phase"] == "start" and held["current"]["attempt"] == 2
    s.op.request("cryo", "set_point", kelvin=150)
    wait_until(lambda: s.op.request("run", "alarms")["alarms"][0]["state"] == "cleared", 60, 0.2,
               what="the alarm to clear")
    assert s.op.request("run", "status")["state"] == "STOP"   # cleared, not yet acknowledged: still held
    s.op.request("run", "ack", alarm="hot")
    again = wait_sequencer(s, lambda st: st["current"]["phase"] == "running" and st)["current"]
    assert again["run"] != first["run"] and again["index"] == first["index"] == 0
    runs = [r for r in s.op.request("run", "runs") if r.get("sequence")]
    assert [(r["run"], r["result"], r["sequence"]["step"]) for r in runs] == [
        (first["run"], "aborted", 0), (again["run"], "running", 0)]


def test_damicm_takes_its_bias_scan_as_the_readme_shows(tmp_path):
    path = damicm_copy(tmp_path)
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT, env=env_for_children(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def send(*args):
        answer = run_tool("send.py", "--experiment", path, "sequencer", *args)
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)
    try:
        with Operator(experiment=str(path)) as op:
            wait_until(lambda: "sequencer" in {c["name"] for c in op.clients()} and op.retained("bias."), 90, 0.5,
                       what="damicm up")
            assert set(send("sequences")["sequences"]) >= {"bias_scan", "darks"}
            queued = send("queue", "sequence=bias_scan", 'variables={"seconds": 1}')
            assert queued["steps"] == 2 + 1 + 3 * (1 + 1 + 3)
            verdict = send("dry_run")
            assert verdict["ok"] and verdict["steps"] == 18, verdict["problems"]
            send("start")

            def done():
                op.ack(by="test")   # the alarms of the start (the cryostat pumping down) hold the scan until acked
                status = op.sequences.status()
                assert status["state"] != "paused", status["paused"]
                return status["finished"] and status["finished"][-1]["state"] == "done"
            wait_until(done, 240, 1, what="the bias scan to end")
            runs = [r for r in op.runs(50) if r.get("sequence")]
            assert [r["comment"] for r in runs] == [f"bias scan {v} V, exposure {n}" for v in (40, 50, 60)
                                                    for n in (1, 2, 3)]
            assert all(r["result"] == "ended" and r["by"] == "sequencer" for r in runs)
            assert [r["params"]["volts"] for r in runs] == [40] * 3 + [50] * 3 + [60] * 3
            assert op.config("bias")["values"]["volts"] == 60
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_a_pause_lets_the_step_in_progress_finish_and_starts_no_other(bench, tmp_path):
    write_sequence(tmp_path, "short", [{"run": {"comment": "first", "seconds": 8}},
                                       {"run": {"comment": "second", "seconds": 8}}])
    s = bench()
    seq(s, "queue", sequence="short")
    seq(s, "start")
    wait_sequencer(s, lambda st: st["current"] and st["current"]["phase"] == "running", what="the first run")
    pausing = seq(s, "pause", why="coffee")
    assert pausing["state"] == "pausing" and s.op.request("run", "status")["state"] == "RUN"
    paused = wait_sequencer(s, lambda st: st["state"] == "paused" and st, what="the pause")
    assert paused["current"]["index"] == 1 and paused["current"]["phase"] == "start"
    assert [(r["comment"], r["result"]) for r in s.op.request("run", "runs") if r.get("sequence")] == [
        ("first", "ended")]
    assert seq(s, "status")["state"] == "paused" and s.op.request("run", "status")["state"] == "STOP"
    seq(s, "resume")
    wait_sequencer(s, lambda st: st["current"]["phase"] == "running", what="the second run")
    assert seq(s, "pause", why="coffee")["state"] == "pausing"
    now = seq(s, "pause", at_once=True, why="now")   # a pause after the step made one at once
    assert now["paused"]["why"] == "now" and now["paused"]["at_once"]
    paused = wait_sequencer(s, lambda st: st["state"] == "paused" and st, what="the pause at once")
    assert (paused["current"]["index"], paused["current"]["attempt"]) == (1, 2)   # taken again on resume
    seq(s, "resume")
    wait_sequencer(s, lambda st: st["finished"] and st["finished"][-1]["state"] == "done", what="the second run")
    assert [r["comment"] for r in s.op.request("run", "runs") if r.get("sequence")] == ["first", "second", "second"]
