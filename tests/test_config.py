"""Programs' settings in a real system: delivered at registration and again after a restart, changed with
validation, refused by the program, frozen during a run unless live, kept through a SIGKILLed run controller,
snapshotted with each run and compared between runs or with the settings now; bad input answered clearly."""

import json
import os
import signal
import subprocess
import sys

import pytest

from runcontrol.control.operator import Operator
from runcontrol.errors import Refused
from tests.helpers import ROOT, env_for_children, helper, wait_until


def configurable(name, record, *flags, **fields):
    return helper("configurable.py", name, record, *flags, client=name, participant=True, **fields)


def notes(record):
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def deliveries(record):
    return [n["config"] for n in notes(record) if "config" in n]


def settings(s, program):
    return s.op.request("run", "config", program=program)


def refused(s, code, **msg):
    with pytest.raises(Refused) as caught:
        s.op.request("run", msg.pop("cmd", "set_config"), timeout=20, **msg)
    assert caught.value.code == code, caught.value
    return str(caught.value)


def test_settings_are_delivered_validated_refused_frozen_kept_and_snapshotted(system, tmp_path):
    record = tmp_path / "amp.jsonl"
    s = system({"amp": configurable("amp", record, config={"gain": 3})})
    first = wait_until(lambda: deliveries(record), 30, 0.1, what="the first settings")[0]
    assert first == {"gain": 3, "threshold": 0.5, "mode": "fast"}   # the experiment's, over the schema's defaults
    wait_until(lambda: (settings(s, "amp")["values"] or {}).get("gain") == 3, 20, 0.1)
    described = settings(s, "amp")
    assert described["live"] == ["threshold"] and described["schema"]["properties"]["gain"]["maximum"] == 10

    changed = s.op.request("run", "set_config", program="amp", values={"gain": 5, "mode": "slow"}, by="anna")
    assert changed["changes"] == {"gain": [3, 5], "mode": ["fast", "slow"]}
    assert deliveries(record)[-1] == {"gain": 5, "threshold": 0.5, "mode": "slow"}
    assert settings(s, "amp")["values"]["gain"] == 5
    entry = s.op.request("run", "config_log", program="amp")[-1]
    assert (entry["by"], entry["changes"], entry["accepted"]) == ("anna", {"gain": [3, 5], "mode": ["fast", "slow"]},
                                                                  True)
    assert s.wait_event("event.config_changed", program="amp")["by"] == "anna"

    count = len(deliveries(record))
    why = refused(s, "bad_config", program="amp", values={"gain": 11, "mode": "turbo", "colour": "red"})
    assert "gain: 11 is greater than the maximum of 10" in why and "mode: 'turbo' is not one of" in why
    assert "(top level): Additional properties are not allowed ('colour' was unexpected)" in why
    assert len(deliveries(record)) == count and settings(s, "amp")["values"]["gain"] == 5   # nothing applied

    why = refused(s, "refused", program="amp", values={"gain": 7})   # the program says no
    assert "a gain of 7 is not allowed" in why and settings(s, "amp")["values"]["gain"] == 5
    assert s.op.request("run", "config_log", program="amp")[-1]["accepted"] is False

    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", comment="settings")["run"]
    why = refused(s, "bad_state", program="amp", values={"gain": 6})
    assert f"amp.gain cannot change during run {run}" in why and "live" in why
    s.op.request("run", "set_config", program="amp", values={"threshold": 0.8}, by="bob")   # live: applies
    assert settings(s, "amp")["values"]["threshold"] == 0.8 and s.op.request("run", "status")["programs"]["amp"][
        "config_changed"] is True   # the view's marker

    before = s.program("amp")
    os.kill(before["pid"], signal.SIGKILL)   # restarted: its settings come back before the run does
    now = s.wait_state("amp", "RUNNING", restarts=before["restarts"] + 1, registered=True)
    def first_three():
        mine = [n for n in notes(record) if n["pid"] == now["pid"]]
        return mine[:3] if len(mine) >= 3 else None
    mine = wait_until(first_three, 30, 0.1, what="the new amp's settings and rejoining the run")
    assert mine[0]["config"] == {"gain": 5, "threshold": 0.8, "mode": "slow"}   # first, then the run
    assert [(n["transition"], n["settings"]) for n in mine[1:]] == [("prepare", mine[0]["config"]),
                                                                    ("begin", mine[0]["config"])]

    s.op.request("run", "end_run")
    with Operator(experiment=str(s.path)) as op:
        assert op.run_config(run)["amp"] == {"gain": 5, "threshold": 0.5, "mode": "slow"}   # as the run began
        assert op.set_config("amp", gain=2)["changes"] == {"gain": [5, 2]}
        s.op.request("run", "prepare_run")
        second = s.op.request("run", "begin_run")["run"]
        s.op.request("run", "end_run")
        assert op.config_diff(run, second) == {"amp": {"gain": [5, 2], "threshold": [0.5, 0.8]}}
        assert op.config_log(n=2)[-1]["changes"] == {"gain": [5, 2]}
    assert s.op.request("run", "runs", n=1)[-1]["config"] == f"run-configs/{second}.json"

    log_before = s.op.request("run", "config_log", n=100)
    s.replace_controller()   # SIGKILLed: settings and their log are on disk
    assert settings(s, "amp")["values"] == {"gain": 2, "threshold": 0.8, "mode": "slow"}
    assert s.op.request("run", "config_log", n=100) == log_before
    shown = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "run_config", f"run={run}"],
                           cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["amp"]["gain"] == 5, shown.stderr
    changed = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "set_config",
                              "program=amp", "mode=fast"], cwd=ROOT, env=env_for_children(), capture_output=True,
                             text=True, timeout=60)
    assert changed.returncode == 0 and json.loads(changed.stdout)["changes"] == {"mode": ["slow", "fast"]}
    (tmp_path / "amp.json").write_text(json.dumps({"gain": 4, "threshold": 0.6}))
    from_file = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "set_config",
                                "program=amp", f"values=@{tmp_path / 'amp.json'}"], cwd=ROOT, env=env_for_children(),
                               capture_output=True, text=True, timeout=60)
    assert from_file.returncode == 0 and json.loads(from_file.stdout)["changes"] == {"gain": [2, 4],
                                                                                    "threshold": [0.8, 0.6]}
    against_now = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "config_diff",
                                  f"a={second}"], cwd=ROOT, env=env_for_children(), capture_output=True, text=True,
                                 timeout=60)
    assert against_now.returncode == 0, against_now.stderr
    assert json.loads(against_now.stdout) == {"amp": {"gain": [2, 4], "mode": ["slow", "fast"],
                                                      "threshold": [0.8, 0.6]}}   # no b: the settings now
    missing = subprocess.run([sys.executable, "send.py", "--experiment", str(s.path), "run", "set_config",
                              "program=amp", "values=@/nonexistent.json"], cwd=ROOT, env=env_for_children(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read /nonexistent.json" in missing.stderr


def test_bad_input_and_a_schema_that_is_not_a_schema(system, tmp_path):
    record, bad = tmp_path / "amp.jsonl", tmp_path / "bad.jsonl"
    s = system({"amp": configurable("amp", record), "odd": configurable("odd", bad, "--bad-schema"),
                "plain": helper("crash_after.py", 600)})
    invalid = s.wait_event("event.config_invalid", program="odd")
    assert "not a JSON Schema" in invalid["problems"][0] and "whole number" in invalid["problems"][0]
    assert "odd announced a settings schema that is not one" in settings(s, "odd")["problem"]["error"]
    assert "takes no settings now" in refused(s, "no_settings", program="odd", values={"gain": 1})
    assert "takes no settings now" in refused(s, "no_settings", program="plain", values={"gain": 1})
    wait_until(lambda: settings(s, "amp")["values"], 20, 0.1)
    assert "no program 'nosuch'" in refused(s, "unknown_program", program="nosuch", values={"gain": 1})
    refused(s, "bad_field", program="amp", values=[1, 2])
    refused(s, "bad_field", program="amp")
    assert "gain: '3' is not of type 'integer'" in refused(s, "bad_config", program="amp", values={"gain": "3"})
    assert "larger than" in refused(s, "bad_config", program="amp", values={"mode": "x" * 70000})
    refused(s, "bad_field", cmd="config_log", n=0)
    refused(s, "bad_field", cmd="run_config", run="one")
    refused(s, "no_such_run", cmd="run_config", run=99)
    assert deliveries(record) == [{"gain": 1, "threshold": 0.5, "mode": "fast"}]   # nothing else reached it
    s.op.request("run", "stop", program="amp", timeout=30)
    assert "amp is not registered now" in refused(s, "not_registered", program="amp", values={"gain": 2})


def test_initial_settings_that_break_a_known_schema_are_reported_at_registration_and_by_check(system, tmp_path):
    record = tmp_path / "amp.jsonl"
    s = system({"amp": configurable("amp", record, config={"gain": 50, "speed": 3})})
    invalid = s.wait_event("event.config_invalid", program="amp")
    assert "programs.amp.config.gain: 50 is greater than the maximum of 10" in invalid["problems"]
    assert deliveries(record) == []   # it keeps its own defaults
    checked = subprocess.run([sys.executable, "run.py", str(s.path), "--check"], cwd=ROOT, env=env_for_children(),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2 and "programs.amp.config.gain: 50 is greater than the maximum of 10" in \
        checked.stderr, checked.stdout + checked.stderr


def test_a_program_added_by_a_reload_gets_its_first_settings(system, tmp_path):
    s = system({"steady": helper("crash_after.py", 600)})
    record = tmp_path / "amp2.jsonl"
    description = json.loads(s.path.read_text())
    description["programs"]["amp2"] = configurable("amp2", record, config={"gain": 4})
    s.path.write_text(json.dumps(description))
    assert s.op.request("run", "reload", timeout=30)["added"] == ["amp2"]
    assert wait_until(lambda: deliveries(record), 30, 0.1)[0]["gain"] == 4
    wait_until(lambda: (settings(s, "amp2")["values"] or {}).get("gain") == 4, 20, 0.1)

