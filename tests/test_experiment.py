"""Loading experiment descriptions: defaults, paths, and every problem listed at once."""

import json

import pytest

import experiments
from runcontrol.errors import ConfigError
from tests.helpers import ROOT


def write(tmp_path, content, name="exp.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_defaults_are_filled_and_paths_resolved_against_the_file(tmp_path):
    exp = experiments.load(write(tmp_path, {"name": "mini"}))
    assert exp.server.router == "tcp://127.0.0.1:9820" and exp.server.events == "tcp://127.0.0.1:9821"
    assert (exp.server.beacon.address, exp.server.beacon.port) == ("127.255.255.255", 7886)
    assert exp.server.heartbeat_s == 5.0 and exp.server.timeout_s == 30.0
    assert exp.paths.state == tmp_path / "var/run" and exp.paths.logs == tmp_path / "var/log"


def test_name_defaults_to_file_stem(tmp_path):
    assert experiments.load(write(tmp_path, {}, "cryo.json")).name == "cryo"


def test_damicm_is_found_by_name_and_valid():
    exp = experiments.load("damicm", cwd=ROOT)
    assert exp.name == "damicm" and exp.path == ROOT / "damicm.json"


def test_every_problem_listed_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"server": {"heartbeat": -1, "beacon": {"port": 70000}},
                                          "paths": {"logs": 3}, "extra": True}))
    problems = info.value.problems
    assert "server.heartbeat: -1 must be more than 0" in problems
    assert "server.beacon.port: 70000 must be at most 65535" in problems
    assert "paths.logs: 3 is not of type string" in problems
    assert any(p.startswith("(top level): unknown key(s)") and "'extra'" in p for p in problems)
    assert len(problems) == 4


def test_bad_json_says_where(tmp_path):
    with pytest.raises(ConfigError, match="line 2 column 1"):
        experiments.load(write(tmp_path, '{"name": "x",\n}'))


def test_missing_experiment_is_not_found(tmp_path):
    with pytest.raises(experiments.NotFound, match="'nothing' not found"):
        experiments.load("nothing", cwd=tmp_path)
