"""The operator API against a real system, imported and opened as the README shows it (by the experiment's name,
found in the working directory): runs, programs, streams, and refusals told apart from failures; a method for every
command of the run controller's table, each sending its command."""

import inspect

import psutil
import pytest

from runcontrol.control import commands
from runcontrol.errors import NoSuchClient, Refused, RequestFailed, RequestTimeout
from runcontrol.control.operator import Operator
from tests.helpers import EventWatcher, helper, wait_until

# The Operator's methods that are no command of the run controller: the server's, and any client's.
NOT_RUN_COMMANDS = {"programs", "clients", "retained", "logs", "stats", "snapshot", "historian", "send", "request",
                    "call", "stream", "close"}


@pytest.fixture
def op(system, tmp_path, monkeypatch):
    s = system({"echo": helper("echo_client.py", "echo", client="echo"),
                "board": helper("participant.py", "board", tmp_path / "board.jsonl", client="board", participant=True)})
    s.wait_state("echo", "RUNNING", registered=True)
    s.wait_state("board", "RUNNING", registered=True)
    monkeypatch.chdir(s.path.parent)   # where the shift script runs: ctl.json is there
    with Operator(experiment=s.path.stem) as operator:
        yield operator


def test_operator_drives_a_run_and_reads_the_system(op):
    assert op.status()["state"] == "STOP"
    run = op.prepare_run()["run"]
    began = op.begin_run(comment="from a script", seconds=5)
    assert (began["state"], began["run"], began["participants"]) == ("RUN", run, ["board"])
    assert op.status()["programs"]["board"]["state"] == "RUNNING"
    assert op.end_run()["state"] == "STOP"
    record = op.runs()[-1]
    assert (record["run"], record["comment"], record["params"]) == (run, "from a script", {"seconds": 5})
    assert set(op.programs()) == {"echo", "board"}
    assert {"echo", "board", "run"} <= {c["name"] for c in op.clients()}
    messages = [e["message"] for e in op.logs(50) if e["kind"] == "run_state" and e["run"] == run]
    assert messages == [f"Ending run {run}", f"Beginning run {run}", f"Prepared run {run}"]  # newest first
    wait_until(lambda: op.stats()["total"]["msgs_in"] > 0, 10, 0.2, what="the server's figures of the last second")
    op.send("server", "_publish", topic="t", data=41, retain=True)
    key = f"{op.client.name}.t"
    assert wait_until(lambda: op.retained(op.client.name).get(key), 10, 0.1)["data"] == 41
    assert key not in op.retained("nobody.")
    before = op.programs()["echo"]
    restarted = op.restart("echo")["echo"]
    assert restarted["state"] == "RUNNING" and restarted["pid"] != before["pid"]
    assert not psutil.pid_exists(before["pid"])
    assert {c["name"]: c["pid"] for c in op.clients()}["echo"] == restarted["pid"]   # the new one took its place


def test_operator_streams_progress_before_the_result(op):
    items = list(op.stream("echo", "slow"))
    assert [kind for kind, _ in items] == ["progress", "progress", "progress", "result"]
    assert [data["step"] for kind, data in items[:3]] == [0, 1, 2]


def test_refusals_and_failures_raise_different_exceptions(op):
    with pytest.raises(Refused) as refused:
        op.request("echo", "refuse")
    assert refused.value.code == "out_of_range"
    with pytest.raises(Refused) as state:
        op.end_run()
    assert state.value.code == "bad_state"
    with pytest.raises(NoSuchClient):
        op.request("nobody", "status")
    with pytest.raises(RequestTimeout):
        list(op.stream("echo", "sleep", timeout=0.5, seconds=3))
    assert not issubclass(Refused, RequestFailed) and not issubclass(RequestFailed, Refused)


def test_every_command_of_the_table_has_an_operator_method_of_its_name_and_every_other_method_is_named():
    methods = {name for name, _ in inspect.getmembers(Operator, inspect.isfunction) if not name.startswith("_")}
    assert set(commands.COMMANDS) <= methods
    assert methods - set(commands.COMMANDS) == NOT_RUN_COMMANDS


def test_each_operator_method_of_a_command_sends_that_command_and_its_payload_passes_the_schema(system, tmp_path,
                                                                                               monkeypatch):
    s = system({"echo": helper("echo_client.py", "echo", client="echo"),
                "board": helper("participant.py", "board", tmp_path / "board.jsonl", client="board", participant=True)})
    s.wait_state("echo", "RUNNING", registered=True)
    s.wait_state("board", "RUNNING", registered=True)
    seen = EventWatcher(s.server.events).sync(s.server.router)   # every message routed to `run`, as delivered
    monkeypatch.chdir(s.path.parent)
    exercised = {}

    def sent(op, method, *args, refused=None, **kwargs):
        """Call op.`method`; the commands it sent to `run` (each waited for on the stream)."""
        before = len(to_run())
        try:
            getattr(op, method)(*args, **kwargs)
        except Refused as exc:
            assert exc.code == refused, f"{method}: {exc}"
        else:
            assert refused is None, f"{method} was not refused {refused}"
        wait_until(lambda: len(to_run()) > before, 10, what=f"what {method} sent on the stream")
        exercised[method] = [m["cmd"] for m in to_run()[before:]]
        return exercised[method]

    def to_run():
        return [m for topic, m in list(seen.items) if topic == "msg.run" and m.get("from") == "op-shift"]
    try:
        with Operator(experiment=s.path.stem, name="op-shift") as op:
            for method, args, kwargs in [("status", (), {}), ("runs", (), {"n": 5}), ("alarms", (), {"log": 5}),
                                         ("config", (), {}), ("config_log", (), {"n": 3}), ("stop", ("echo",), {}),
                                         ("start", ("echo",), {}), ("restart", ("echo",), {}), ("reload", (), {}),
                                         ("prepare_run", (), {"timeout": 5}), ("abort_run", (), {}),
                                         ("prepare_run", (), {}), ("begin_run", (), {"comment": "all", "seconds": 1}),
                                         ("pause_run", (), {"why": "a look"}), ("resume_run", (), {}),
                                         ("end_run", (), {}), ("ack", (), {"by": "anna"})]:
                assert sent(op, method, *args, **kwargs) == [method]
            run = op.runs(1)[-1]["run"]
            wait_until(lambda: to_run()[-1]["cmd"] == "runs", 10, what="the runs request on the stream")
            assert sent(op, "run_config", run) == ["run_config"] and sent(op, "config_diff", run) == ["config_diff"]
            assert sent(op, "set_config", "echo", refused="no_settings", gain=1) == ["set_config"]  # it has no schema
            for method, kwargs in [("notify_test", {"route": "shift"}), ("notifications", {"n": 5}),   # no notify
                                   ("maintenance", {"minutes": 5, "reason": "test"})]:                # section
                assert sent(op, method, refused="refused", **kwargs) == [method]
            assert sent(op, "record", run) == ["record"] and sent(op, "flag", run, "good", why="seen") == ["flag"]
            assert sent(op, "find", "run>0", flag="good", limit=5) == ["find"]
            for method in ("exclude", "include"):   # echo takes no part in runs
                assert sent(op, method, "echo", refused="no_such_client") == [method]
            assert sent(op, "programs") == ["status"] and sent(op, "snapshot") == ["status"]
    finally:
        seen.close()
    assert set(exercised) >= set(commands.COMMANDS)
