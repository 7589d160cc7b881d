"""Run control: transitions through real participant processes, run numbers, the run log, rejoining."""

import json
import os
import signal

import pytest

from runcontrol.errors import Refused
from tests.helpers import helper, wait_until


def participant(name, record, *flags, **fields):
    return helper("participant.py", name, record, *flags, client=name, participant=True, **fields)


def transitions(record):
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def wait_participants(s, *names):
    for name in names:
        s.wait_state(name, "RUNNING", registered=True)


def test_a_full_run_cycle(system, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    s = system({"pa": participant("pa", a), "pb": participant("pb", b), "other": helper("crash_after.py", 600)})
    wait_participants(s, "pa", "pb")
    with pytest.raises(Refused) as refused:
        s.op.request("run", "begin_run")
    assert refused.value.code == "bad_state" and "needs state READY; the state is STOP" in str(refused.value)
    ready = s.op.request("run", "prepare_run")
    assert ready["state"] == "READY" and ready["participants"] == ["pa", "pb"]
    run = ready["run"]
    began = s.op.request("run", "begin_run", comment="first light", params={"exposure": 2})
    assert (began["state"], began["run"]) == ("RUN", run)
    with pytest.raises(Refused):
        s.op.request("run", "begin_run")
    assert s.op.request("run", "status")["state"] == "RUN"
    ended = s.op.request("run", "end_run")
    assert (ended["state"], ended["run"]) == ("STOP", run)
    got = transitions(a)
    assert [t["transition"] for t in got] == ["prepare", "begin", "end"]
    assert got[1]["comment"] == "first light" and got[1]["params"] == {"exposure": 2}
    assert {t["run"] for t in got} == {run}
    s.wait_event("event.run_state", message=f"Ending run {run}")
    messages = [obj["message"] for topic, obj in s.events.items if topic == "event.run_state"]
    assert messages == [f"Prepared run {run}", f"Beginning run {run}", f"Ending run {run}"]
    record = s.op.request("run", "runs")[-1]
    assert record["run"] == run and record["result"] == "ended" and record["comment"] == "first light"
    assert record["participants"] == ["pa", "pb"] and record["duration"] >= 0 and record["end"] > record["start"]
    assert s.op.request("run", "prepare_run")["run"] == run + 1


def test_a_refusing_participant_keeps_the_state_and_is_named(system, tmp_path):
    s = system({"good": participant("good", tmp_path / "g"), "grumpy": participant("grumpy", tmp_path / "r",
                                                                                 "--refuse", "begin")})
    wait_participants(s, "good", "grumpy")
    s.op.request("run", "prepare_run")
    with pytest.raises(Refused) as refused:
        s.op.call({"to": "run", "cmd": "begin_run", "timeout": 5}, 15)
    text = str(refused.value)
    assert refused.value.code == "failed" and "the state stays READY" in text
    said, taken_back = text.split(":", 1)[1].split("; taken back: ")
    assert "grumpy refused: grumpy will not begin" in said and "good" not in said and taken_back == "end to good"
    assert s.op.request("run", "status")["state"] == "READY"
    wait_until(lambda: [t["abort"] for t in transitions(tmp_path / "g")][-1:] == [True], 10)
    aborted = s.op.request("run", "abort_run")
    assert aborted["state"] == "STOP"
    assert s.op.request("run", "runs")[-1]["result"] == "aborted"


def test_a_silent_participant_is_named_and_the_state_unchanged_and_the_wait_is_10_s_unless_the_request_says(
        system, tmp_path):
    s = system({"mute": participant("mute", tmp_path / "m", "--silent", "prepare")})
    wait_participants(s, "mute")
    with pytest.raises(Refused) as refused:
        s.op.call({"to": "run", "cmd": "prepare_run", "timeout": 1}, 15)
    assert "mute silent (no answer in time)" in str(refused.value)
    assert "asking mute, answers within 1 s" in s.controller.log.read_text()
    status = s.op.request("run", "status")
    assert status["state"] == "STOP"
    assert s.op.request("run", "runs")[-1]["result"] == "failed"

    pid = s.program("mute")["pid"]
    pending = s.op.start({"to": "run", "cmd": "prepare_run"})   # no timeout: the run controller's own
    wait_until(lambda: s.op.poll(0.05) * 0 or "asking mute, answers within 10 s" in s.controller.log.read_text(),
               20, 0, what="the transition to start")
    os.kill(pid, signal.SIGKILL)   # its end cuts the 10 s short
    with pytest.raises(Refused) as refused:
        s.op.wait(pending, 30).value()
    assert "the state stays STOP: mute " in str(refused.value)


@pytest.mark.parametrize("flag", ["--meta-participant", "--meta-run"])   # the meta key, and its earlier name
def test_a_client_whose_hello_says_participant_takes_part_and_an_unregistered_program_counts_as_silent(
        system, tmp_path, launch_meta, flag):
    s = system({"absent": participant("absent", tmp_path / "x", restart="never", start_timeout=600,
                                      depends_on=["never"]),
                "never": helper("crash_after.py", 0, 1, restart="never")})
    launch_meta(s, "extra", tmp_path / "extra.jsonl", flag)
    wait_until(lambda: "extra" in s.op.request("run", "status")["participants"], 10)
    with pytest.raises(Refused) as refused:
        s.op.call({"to": "run", "cmd": "prepare_run", "timeout": 3}, 15)
    assert "absent silent (not registered)" in str(refused.value)
    assert "taken back: end to extra" in str(refused.value)   # it had prepared: it is back in STOP
    wait_until(lambda: [(t["transition"], t["abort"]) for t in transitions(tmp_path / "extra.jsonl")]
               == [("prepare", False), ("end", True)], 10)


@pytest.fixture
def launch_meta(tmp_path):
    from tests.helpers import start_program, stop_process
    started = []

    def launch(s, name, record, flag="--meta-participant"):
        started.append(start_program("participant.py", name, record, flag, "--experiment", s.path,
                                     log=tmp_path / f"{name}.log"))
        wait_until(lambda: name in s.clients(), 15)
    yield launch
    for proc in started:
        stop_process(proc)


def test_a_participant_killed_during_a_run_rejoins_it(system, tmp_path):
    record = tmp_path / "lta.jsonl"
    s = system({"lta": participant("lta", record)})
    wait_participants(s, "lta")
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", comment="long")["run"]
    first = s.program("lta")["pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len([t for t in transitions(record) if t["rejoin"]]) >= 2, 20)
    rejoined = [t for t in transitions(record) if t["rejoin"]]
    assert [(t["transition"], t["run"]) for t in rejoined] == [("prepare", run), ("begin", run)]
    assert rejoined[1]["comment"] == "long"
    assert s.op.request("run", "end_run")["state"] == "STOP"


def test_run_numbers_never_repeat_across_a_sigkill_of_the_controller(system, tmp_path):
    s = system({"p": participant("p", tmp_path / "p")})
    wait_participants(s, "p")
    first = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run")
    s.op.request("run", "end_run")
    s.replace_controller()
    wait_participants(s, "p")
    second = s.op.request("run", "prepare_run")["run"]
    assert second == first + 1
    s.replace_controller()  # during READY: the state survives too
    status = s.op.request("run", "status")
    assert (status["state"], status["run"]) == ("READY", second)
    s.op.request("run", "abort_run")
    assert [r["run"] for r in s.op.request("run", "runs")] == [first, second]


def test_abort_run_from_run_ends_it_for_every_participant_and_logs_it_aborted(system, tmp_path):
    s = system({"p": participant("p", tmp_path / "p"), "q": participant("q", tmp_path / "q")})
    wait_participants(s, "p", "q")
    run = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run", comment="cut short")
    aborted = s.op.request("run", "abort_run")
    assert (aborted["state"], aborted["run"], aborted["problems"]) == ("STOP", run, {})
    for record in (tmp_path / "p", tmp_path / "q"):
        last = transitions(record)[-1]
        assert (last["transition"], last["run"], last["abort"]) == ("end", run, True)
    record = s.op.request("run", "runs")[-1]
    assert (record["run"], record["result"], record["comment"]) == (run, "aborted", "cut short")
    assert s.wait_event("event.run_state", message=f"Aborted run {run}")["state"] == "STOP"


def test_a_controller_crash_during_run_keeps_the_run_and_its_number(system, tmp_path):
    s = system({"p": participant("p", tmp_path / "p")})
    wait_participants(s, "p")
    run = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run", comment="through a crash", params={"seconds": 3})
    s.replace_controller()
    status = s.op.request("run", "status")
    assert (status["state"], status["run"]) == ("RUN", run)
    assert status["current_run"]["comment"] == "through a crash"
    wait_participants(s, "p")  # its programs were started afresh and told the run again
    ended = s.op.request("run", "end_run")
    assert (ended["state"], ended["run"]) == ("STOP", run)
    record = s.op.request("run", "runs")[-1]
    assert (record["run"], record["result"], record["params"]) == (run, "ended", {"seconds": 3})
    assert s.op.request("run", "prepare_run")["run"] == run + 1
    s.op.request("run", "abort_run")


def test_a_transition_sent_to_the_run_controller_itself_is_answered_not_a_handler_error(system):
    s = system({})
    answer = s.op.request("run", "_transition", transition="prepare", run=1)
    assert answer == {"state": "READY", "run": 1}
    with pytest.raises(Refused) as refused:
        s.op.request("run", "_transition", transition="sideways", run=1)
    assert refused.value.code == "bad_field" and "unknown transition 'sideways'" in str(refused.value)


def test_stopping_the_experiment_during_a_run_ends_it_and_the_next_start_is_in_stop(system, tmp_path):
    s = system({"p": participant("p", tmp_path / "p")})
    wait_participants(s, "p")
    run = s.op.request("run", "prepare_run")["run"]
    s.op.request("run", "begin_run", comment="overnight")
    assert s.controller.stop() == 0  # SIGTERM, as run.py's Ctrl-C
    last = transitions(tmp_path / "p")[-1]
    assert (last["transition"], last["run"], last["abort"]) == ("end", run, False)
    assert last["reason"] == "the experiment was stopped (SIGTERM)"
    record = [json.loads(line) for line in (s.path.parent / "state" / "runs.jsonl").read_text().splitlines()][-1]
    assert (record["run"], record["result"], record["why"]) == (run, "ended by shutdown",
                                                               "the experiment was stopped (SIGTERM)")
    from runcontrol.errors import RunControlError
    from tests.helpers import ControllerProcess
    s.controller = ControllerProcess(s.path).start()

    def status_of_the_new_controller():
        try:
            return s.op.request("run", "status", timeout=5)
        except RunControlError:
            return None
    status = wait_until(status_of_the_new_controller, 30, 0.3)
    assert (status["state"], status["run"]) == ("STOP", None)
    wait_participants(s, "p")
    assert s.op.request("run", "prepare_run")["run"] == run + 1
    s.op.request("run", "abort_run")


def test_a_participant_lost_during_a_transition_is_named_lost_not_refusing(system, tmp_path):
    s = system({"p": participant("p", tmp_path / "p", "--silent", "prepare")})
    wait_participants(s, "p")
    pid = s.program("p")["pid"]
    pending = s.op.start({"to": "run", "cmd": "prepare_run", "timeout": 20})
    wait_until(lambda: s.op.poll(0.05) * 0 or transitions(tmp_path / "p"), 10, 0)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Refused) as refused:
        s.op.wait(pending, 30).value()
    assert "p lost (" in str(refused.value) and "refused" not in str(refused.value)


def test_stopping_the_experiment_while_a_begin_is_under_way_still_ends_the_run_it_leaves_open(system, tmp_path):
    """The begin (its participant silent) is let finish, fails, and the READY run is ended and logged."""
    s = system({"p": participant("p", tmp_path / "p", "--silent", "begin")})
    wait_participants(s, "p")
    run = s.op.request("run", "prepare_run")["run"]
    s.op.start({"to": "run", "cmd": "begin_run", "comment": "never begun", "timeout": 3})
    wait_until(lambda: s.op.poll(0.05) * 0 or [t for t in transitions(tmp_path / "p") if t["transition"] == "begin"],
               20, 0, what="the participant to hear of the begin")
    assert s.controller.stop() == 0   # SIGTERM while the begin waits for its answer
    record = [json.loads(line) for line in (s.path.parent / "state" / "runs.jsonl").read_text().splitlines()][-1]
    assert (record["run"], record["result"]) == (run, "ended by shutdown")
    assert json.loads((s.path.parent / "state" / "run_state.json").read_text())["state"] == "STOP"
