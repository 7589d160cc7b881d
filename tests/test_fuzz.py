"""Thousands of random frames at a real server while a well-behaved client keeps getting answers.

`make fuzz` runs it longer (ORBIT_FUZZ_EXAMPLES).
"""

import json
import os
import threading

import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from runcontrol.client.client import Client
from tests.helpers import RawClient, ServerProcess, write_experiment

GOOD_NAMES = ["good", "echo"]
COMMANDS = ["_hello", "_ping", "_pong", "_bye", "_list", "_status", "_stats", "_logs", "_log", "_event",
            "_publish", "_retained", "_reply", "_progress", "_error", "echo", "x"]

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                             max_size=3),
                      max_leaves=8)
envelopes = st.fixed_dictionaries(
    {"cmd": st.sampled_from(COMMANDS) | values},
    optional={"to": st.sampled_from(GOOD_NAMES + ["server", "*", "nobody"]) | values,
              "id": st.integers() | st.text(max_size=70) | values,
              "re": values, "name": st.sampled_from(GOOD_NAMES + ["fuzz", "server"]) | values,
              "kind": st.text(max_size=10) | values, "topic": st.text(max_size=10) | values,
              "data": values, "retain": values, "n": values, "prefix": values, "actions": values,
              "meta": values, "pid": values, "host": values, "level": values, "msg": values,
              "from": values, "ts": values})
frames = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: json.dumps(v).encode()),
    envelopes.map(lambda m: json.dumps(m).encode()),
    st.just(b'{"cmd": "x", "blob": "' + b"z" * (1 << 20) + b'"}'),
)
batches = st.lists(st.one_of(frames.map(lambda f: [f]), st.lists(frames, min_size=2, max_size=3)),
                   min_size=1, max_size=12)


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    server = ServerProcess(write_experiment(folder, "fuzz", heartbeat=0.5, timeout=5)).start()
    echo = Client("echo", server=server.router, beacon_port=1)
    echo.add_handler("echo", lambda msg: msg.get("n"))
    echo.connect(10)
    thread = threading.Thread(target=echo.run_forever, args=(0.02,), daemon=True)
    thread.start()
    good = Client("good", server=server.router, beacon_port=1).connect(10)
    attacker = RawClient(server.router)
    yield server, good, attacker
    attacker.close()
    good.close()
    echo.stop()
    thread.join(5)
    echo.close()
    assert server.stop() == 0


@settings(max_examples=int(os.environ.get("ORBIT_FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches, n=st.integers(0, 10**6), name=st.none() | st.sampled_from(["fuzz", "fuzz2"] + GOOD_NAMES))
def test_random_frames_never_hurt_the_server(fuzz_env, batch, n, name):
    server, good, attacker = fuzz_env
    if name is not None:  # registered, the attacker reaches routing, publishing and the rest
        attacker.send({"cmd": "_hello", "name": name})
    for message in batch:
        attacker.send_frames(message)
    while attacker.sock.poll(0):
        attacker.sock.recv_multipart(zmq.NOBLOCK)
    assert good.request("echo", "echo", n=n, timeout=10) == n
    assert good.request(None, "_status", timeout=10)["pid"] == server.proc.pid
    assert server.proc.poll() is None


# --- the experiment loader ------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["always", "never", "TERM", "tcp://127.0.0.1:0",
                                                           "tcp://0.0.0.0:1", "local", "x y", "../..", "python"]))
KEYS = st.sampled_from(["name", "server", "paths", "programs", "hosts", "logs", "run", "cmd", "restart",
                        "depends_on", "client", "router", "events", "beacon", "port", "curve", "insecure",
                        "backoff", "initial", "max", "max_restarts", "stop_signal", "env", "host", "a", "b"])
DESCRIPTIONS = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(KEYS, inner, max_size=6)),
                            max_leaves=30)


@settings(max_examples=int(os.environ.get("ORBIT_FUZZ_EXAMPLES", "300")) * 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(DESCRIPTIONS)
def test_the_experiment_loader_accepts_or_explains_anything(tmp_path_factory, raw):
    import experiments
    from runcontrol.errors import ConfigError
    try:
        spec = experiments.from_dict(raw, tmp_path_factory.getbasetemp() / "fuzz.json")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
    else:
        assert all(p.argv for p in spec.programs)
