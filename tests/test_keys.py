"""python -m runcontrol.bus.keys: key pairs with the right permissions, kept unless --force."""

import json
import stat
import subprocess
import sys

import zmq.auth

from tests.helpers import ROOT, env_for_children, helper


def run_keys(*args):
    return subprocess.run([sys.executable, "-m", "runcontrol.bus.keys", *map(str, args)], cwd=ROOT,
                          env=env_for_children(), capture_output=True, text=True, timeout=60)


def keyed_experiment(tmp_path):
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps({"name": "keyed", "server": {"curve": {"server_key": "keys/server.key",
                                                                     "clients": "keys/clients"}},
                                "programs": {"lta1": helper("echo_client.py", "lta1", client="lta1"),
                                             "plain": helper("crash_after.py", 60)}}))
    return path


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_made_for_server_programs_controller_and_operator(tmp_path):
    result = run_keys(keyed_experiment(tmp_path))
    assert result.returncode == 0, result.stderr
    keys = tmp_path / "keys"
    for public in [keys / "server.key", *(keys / "clients" / f"{n}.key" for n in ("lta1", "run", "operator"))]:
        secret = public.with_name(public.name + "_secret")
        assert mode(secret) == 0o600 and mode(public) == 0o644
        loaded_public, loaded_secret = zmq.auth.load_certificate(secret)
        assert loaded_secret and loaded_public == zmq.auth.load_certificate(public)[0]
    assert mode(keys / "clients") == 0o700
    assert sorted(p.name for p in (keys / "clients").glob("*.key")) == ["lta1.key", "operator.key", "run.key"]
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["created"] * 4


def test_existing_keys_are_kept_unless_forced(tmp_path):
    path = keyed_experiment(tmp_path)
    run_keys(path)
    before = (tmp_path / "keys" / "server.key").read_text()
    kept = run_keys(path)
    assert kept.returncode == 0 and [line.split()[0] for line in kept.stdout.splitlines()] == ["kept"] * 4
    assert (tmp_path / "keys" / "server.key").read_text() == before
    assert [line.split()[0] for line in run_keys(path, "--force").stdout.splitlines()] == ["created"] * 4
    assert (tmp_path / "keys" / "server.key").read_text() != before


def test_an_experiment_without_curve_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"name": "plain"}))
    result = run_keys(path)
    assert result.returncode == 2 and "no server.curve" in result.stderr and '"server_key"' in result.stderr
