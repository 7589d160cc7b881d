"""The DAMIC-M programs (simulated instruments, monitor, command client) as real processes on a real server."""

import json
import subprocess
import sys

import pytest

from runcontrol.errors import Refused
from tests.helpers import ROOT, env_for_children, stop_process, wait_until


@pytest.fixture
def launch(server, tmp_path):
    """launch(module, name, *args) starts `python -m module --name name ...` and waits until it registers."""
    started = []

    def start(module, name, *args, wait=True):
        with open(tmp_path / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, "--name", name, "--experiment",
                                     str(server.path), *map(str, args)], cwd=ROOT, env=env_for_children(),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        return proc
    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture
def op(make_client, launch):
    client = make_client("op")
    client.launch = launch
    return client


def wait_registered(op, *names):
    wait_until(lambda: set(names) <= {c["name"] for c in op.request(None, "_list")}, 30, 0.1,
               what=f"{names} to register")


def refusal(op, to, cmd, **payload):
    with pytest.raises(Refused) as refused:
        op.request(to, cmd, **payload)
    return refused.value


def test_cryo_validates_its_set_point_and_follows_it(op):
    op.launch("clients.sim.cryo", "cryo", "--start", 150, "--rate", 50, "--period", 0.1)
    wait_registered(op, "cryo")
    assert refusal(op, "cryo", "set_point", kelvin=20).code == "out_of_range"
    assert refusal(op, "cryo", "set_point", kelvin="cold").code == "bad_field"
    assert refusal(op, "cryo", "set_point").code == "bad_field"
    assert op.request("cryo", "set_point", kelvin=120)["set_point"] == 120
    wait_until(lambda: abs(op.request("cryo", "status")["temperature"] - 120) < 1, 10)
    retained = op.request(None, "_retained", prefix="cryo.")
    assert retained["cryo.values"]["data"]["set_point"] == 120


def test_bias_interlock_refuses_warm_ccds_and_trips_on_venting(op):
    op.launch("clients.sim.cryo", "cryo", "--start", 250, "--rate", 40, "--period", 0.1)
    op.launch("clients.sim.vacuum", "vacuum", "--start", 1e-3, "--period", 0.1)
    op.launch("clients.sim.bias", "bias")
    wait_registered(op, "cryo", "vacuum", "bias")
    first = refusal(op, "bias", "on")
    assert first.code == "interlock" and ("temperature" in str(first))
    wait_until(lambda: op.request("bias", "status")["interlock"] is None, 20, 0.2, what="cold and pumped")
    assert op.request("bias", "on")["on"] is True
    op.request("vacuum", "vent")
    status = wait_until(lambda: (s := op.request("bias", "status"))["tripped"] and s, 10, 0.1)
    assert status["on"] is False and "pressure 1000 is above the limit" in status["tripped"]
    assert "pressure" in str(refusal(op, "bias", "on"))


def transition(op, to, kind, run, **fields):
    return op.request(to, "_transition", transition=kind, run=run, **fields)


@pytest.fixture
def shell(op, tmp_path):
    config = tmp_path / "commands.json"
    config.write_text(json.dumps({"commands": {
        "echo": {"argv": ["echo", "{word}"], "args": {"word": {"pattern": "[a-z]{1,10}"}}},
        "where": {"argv": ["ls", "{folder}"], "args": {"folder": {"choices": ["/", "/tmp"]}}},
        "slow": {"argv": ["sleep", "30"], "timeout": 0.5},
        "fails": {"argv": ["ls", "/no/such/folder"]}}}))
    op.launch("clients.command", "shell", "--config", config)
    wait_registered(op, "shell")
    return op


def test_command_client_runs_only_what_its_configuration_allows(shell):
    assert shell.request("shell", "run", command="echo", args={"word": "hello"})["stdout"] == "hello\n"
    failed = shell.request("shell", "run", command="fails")
    assert failed["code"] != 0 and "No such file" in failed["stderr"]
    assert refusal(shell, "shell", "run", command="rm").code == "not_allowed"
    injected = refusal(shell, "shell", "run", command="echo", args={"word": "hi; rm -rf /"})
    assert injected.code == "not_allowed" and "does not match" in str(injected)
    assert refusal(shell, "shell", "run", command="where", args={"folder": "/etc"}).code == "not_allowed"
    assert refusal(shell, "shell", "run", command="echo", args={"word": "a", "x": "b"}).code == "bad_field"
    assert refusal(shell, "shell", "run", command="echo").code == "bad_field"
    assert set(shell.request("shell", "list")) == {"echo", "where", "slow", "fails"}


def test_command_client_kills_a_command_past_its_timeout_and_keeps_serving(shell):
    slow = shell.start({"to": "shell", "cmd": "run", "command": "slow"})
    assert shell.request("shell", "run", command="echo", args={"word": "meanwhile"})["stdout"] == "meanwhile\n"
    answer = shell.wait(slow, 20)
    assert not answer.ok and answer.code == "timeout" and "timed out after 0.5 s" in answer.error
    assert shell.request("shell", "status")["timeouts"] == 1


def test_command_client_refuses_a_bad_configuration(server, tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"commands": {"x": {"argv": ["echo", "{word}"]}}}))
    result = subprocess.run([sys.executable, "-m", "clients.command", "--name", "shell", "--config", str(config),
                             "--experiment", str(server.path)], cwd=ROOT, env=env_for_children(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "commands.x.argv: {word} has no rule in commands.x.args" in result.stderr


def test_monitor_appends_every_clients_values(op, tmp_path):
    out = tmp_path / "monit.jsonl"
    op.launch("clients.sim.vacuum", "vacuum")
    op.launch("clients.sim.cryo", "cryo")
    op.launch("clients.monitor", "monitor", "--interval", 60, "--out", out)
    wait_registered(op, "vacuum", "cryo", "monitor")
    op.request("monitor", "poll")

    def lines():
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    wait_until(lambda: {"vacuum", "cryo"} <= {entry["client"] for entry in lines()}, 10)
    vacuum = next(entry for entry in lines() if entry["client"] == "vacuum")
    assert vacuum["values"]["unit"] == "mbar" and vacuum["ts"] > 0
    change = {"by": "anna", "changes": {"set_point": [140, 130]}, "run": None}
    wait_until(lambda: op.send(None, "_event", kind="config_changed", program="cryo", **change) or [
        e for e in lines() if e.get("config_changed")], 10, 0.2, what="the settings change in the monitor's file")
    assert next(e for e in lines() if e.get("config_changed")) | {"ts": 0} == {"ts": 0, "client": "cryo",
                                                                              "config_changed": change}
