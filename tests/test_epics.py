"""Orbit on EPICS Channel Access: the epics program in a real system, against a real caproto IOC and real CA clients.

Published numbers served as process variables with units, bus time and the severity of the alarms on them, and
every change to a monitor; the run state and number; puts on writable settings as set_config (refused with the
reason, frozen during a run), nothing else writable; an IOC's channel imported into the bus, the history and the
alarms, missing while the IOC is down and back after; the program SIGKILLed, restarted, a monitor resumed. And the
rules without I/O (clients/epicsbridge/board.py, imported.py) and the experiment's `epics` section.

Channel Access runs on loopback only, on ports of this test's own; a CA repeater of its own (on loopback) takes the
beacons. No test starts a repeater by accident: caproto's asyncio and threading clients never spawn one, and its
sync client is called with `repeater=False`. Debian has no package with EPICS base's caget/camonitor (only its
client library, libca), so the CA clients here are caproto's: threading (monitors), sync (reads and puts).
"""

import json
import os
import signal
import subprocess
import sys

import pytest
from caproto import CaprotoError, ErrorResponseReceived
from caproto.sync import client as ca
from caproto.threading.client import Context

import experiments
from clients.epicsbridge import board as boards
from clients.epicsbridge.imported import Imports
from experiments.errors import ConfigError
from runcontrol import protocol
from tests.helpers import ROOT, System, env_for_children, free_port, helper, start_program, stop_process, wait_until, \
    write_experiment

pytestmark = pytest.mark.xdist_group(name="epics")   # one system for the module, on one worker

PREFIX = "T:"
IOC = "LAB:"
EXPORT = ["op.values.t", "run.state", "run.number", "run.alarm.*", "knob.config.gain", "knob.config.threshold",
          "knob.config.mode", "epics.facility.*"]
WRITABLE = ["knob.config.gain", "knob.config.threshold", "knob.config.mode"]
MISSING_S, REPUBLISH_S = 3, 1
ALARMS = {
    "op_hot": {"value": "op.values.t", "above": 10, "severity": "alarm", "actions": ["log", "publish"]},
    "op_warm": {"value": "op.values.t", "above": 5, "severity": "warning"},
    "t1_high": {"value": "epics.facility.t1", "above": 0, "severity": "warning"},
    "t1_missing": {"value": "epics.facility.t1", "missing": MISSING_S, "severity": "alarm"},
}


class Bridge:
    """The system (server, run controller, historian, `knob`, `epics`), its CA ports and a CA client's helpers."""

    def __init__(self, folder):
        self.ports = {"ioc": free_port(), "bridge": free_port(), "repeater": free_port()}
        self.record = folder / "knob.jsonl"
        programs = {"historian": {"cmd": ["python", "-m", "clients.historian"], "client": "historian"},
                    "knob": helper("configurable.py", "knob", self.record, client="knob", participant=True),
                    "epics": {"cmd": ["python", "-m", "clients.epics"], "client": "epics"}}
        path = write_experiment(folder, "epics-test", programs=programs, alarms=ALARMS, timeout=5.0)
        description = json.loads(path.read_text())
        description["epics"] = {
            "prefix": PREFIX, "export": EXPORT, "writable": WRITABLE,
            "import": {f"{IOC}T1": {"as": "facility.t1", "units": "K"}},
            "interfaces": ["127.0.0.1"], "addresses": [f"127.0.0.1:{self.ports['ioc']}"],
            "server_port": self.ports["bridge"], "repeater_port": self.ports["repeater"], "republish": REPUBLISH_S}
        path.write_text(json.dumps(description))
        self.folder, self.path = folder, path
        self.repeater = self.s = None

    def start(self):
        self.repeater = subprocess.Popen(
            [sys.executable, "-c", "from caproto.sync.repeater import run; run('127.0.0.1')"], cwd=ROOT,
            env={**env_for_children(), "EPICS_CA_REPEATER_PORT": str(self.ports["repeater"])},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.s = System(self.path)

    def until(self, predicate, timeout_s=20.0, what=None):
        """Wait for `predicate()` while the operator client keeps answering its heartbeats."""
        return wait_until(lambda: self.s.op.poll(0.05) * 0 or predicate(), timeout_s, 0, what=what)

    def read(self, name, data_type="control"):
        """A CA read of PREFIX + name (colons), or None when it is not served (yet)."""
        try:
            return ca.read(PREFIX + name, data_type=data_type, timeout=1.0, repeater=False)
        except CaprotoError:
            return None

    def value(self, name):
        reading = self.read(name)
        return None if reading is None else reading.data[0]

    def put(self, name, value):
        return ca.write(PREFIX + name, value, notify=True, timeout=20.0, repeater=False)

    def retained(self, key):
        return self.s.op.request(None, "_retained", prefix=key).get(key)

    def start_ioc(self):
        return start_program("ioc.py", IOC, self.ports["ioc"], self.ports["repeater"],
                             log=self.folder / "ioc.log")

    def close(self):
        try:
            if self.s is not None:
                self.s.close()
        finally:
            if self.repeater is not None:
                stop_process(self.repeater)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    made = Bridge(tmp_path_factory.mktemp("epics"))
    saved = {key: os.environ.get(key) for key in CLIENT_ENV}
    try:   # caproto's clients in this process read where to search from the environment
        made.start()
        os.environ.update({"EPICS_CA_ADDR_LIST": f"127.0.0.1:{made.ports['bridge']}", "EPICS_CA_AUTO_ADDR_LIST": "NO",
                           "EPICS_CA_SERVER_PORT": str(made.ports["bridge"]),
                           "EPICS_CA_REPEATER_PORT": str(made.ports["repeater"])})
        made.until(lambda: made.read("run:state") is not None, 30, "the epics program to serve run:state")
        yield made
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        made.close()


CLIENT_ENV = ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", "EPICS_CA_SERVER_PORT", "EPICS_CA_REPEATER_PORT")


class Monitor:
    """A CA monitor (caproto's threading client) of PREFIX + name: every value it was sent, in order."""

    def __init__(self, name):
        self.values = []
        self.context = Context(timeout=5.0)
        self.pv, = self.context.get_pvs(PREFIX + name)
        self.subscription = self.pv.subscribe(data_type="time")
        self.subscription.add_callback(self.took)

    def took(self, subscription, response):
        self.values.append(float(response.data[0]))

    def close(self):
        self.context.disconnect()


def enum_text(reading):
    return reading.metadata.enum_strings[reading.data[0]].decode()


# --- in a real system ----------------------------------------------------------------------------------------


def test_epics_serves_published_numbers_with_units_bus_time_and_the_severity_of_alarms_and_monitors_every_change(
        bridge):
    s = bridge.s
    s.op.publish("values", {"t": 4.0, "unit": "K", "other": 1.0}, retain=True)
    bridge.until(lambda: bridge.value("op:values:t") == 4.0, what="op:values:t served")
    reading = bridge.read("op:values:t")
    assert reading.metadata.units == b"K" and reading.metadata.severity == 0
    published = bridge.retained("op.values")["ts"]
    assert abs(bridge.read("op:values:t", "time").metadata.timestamp - published) < 1e-3   # the bus's time
    assert PREFIX + "op:values:other" not in s.op.request("epics", "status")["names"]   # not exported

    s.op.publish("values", {"t": 20.0, "unit": "K"}, retain=True)   # op_hot (alarm) and op_warm (warning) hold
    bridge.until(lambda: (r := bridge.read("op:values:t")) and (r.metadata.severity, r.metadata.status) == (2, 3),
                 what="MAJOR, HIHI")
    bridge.until(lambda: (r := bridge.read("run:alarm:op_hot:active")) and r.data[0] == 1 and r.metadata.severity == 2,
                 what="run.alarm.op_hot.active served MAJOR")
    s.op.publish("values", {"t": 7.0, "unit": "K"}, retain=True)    # op_warm only
    bridge.until(lambda: (r := bridge.read("op:values:t")) and (r.metadata.severity, r.metadata.status) == (1, 4),
                 what="MINOR, HIGH")
    s.op.publish("values", {"t": 4.0, "unit": "K"}, retain=True)
    bridge.until(lambda: (r := bridge.read("op:values:t")) and r.metadata.severity == 0, what="NO_ALARM")

    monitor = Monitor("op:values:t")
    try:
        bridge.until(lambda: monitor.values and monitor.values[-1] == 4.0, what="the monitor's first value")
        for t in range(41, 46):   # a burst: each one reaches the monitor, in order
            s.op.publish("values", {"t": float(t), "unit": "K"}, retain=True)
        bridge.until(lambda: monitor.values[-5:] == [41.0, 42.0, 43.0, 44.0, 45.0], what="every change")
    finally:
        monitor.close()


def test_epics_serves_the_run_state_and_number_and_hears_searches_broadcast_on_loopback(bridge, monkeypatch):
    s = bridge.s
    assert enum_text(bridge.read("run:state")) == "STOP"
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", f"127.255.255.255:{bridge.ports['bridge']}")
    assert enum_text(bridge.read("run:state")) == "STOP"      # found by a broadcast search
    monkeypatch.undo()
    run = s.op.request("run", "prepare_run", timeout=20)["run"]
    bridge.until(lambda: enum_text(bridge.read("run:state")) == "READY" and bridge.value("run:number") == run,
                 what=f"READY, run {run}")
    s.op.request("run", "abort_run", timeout=20)
    bridge.until(lambda: enum_text(bridge.read("run:state")) == "STOP", what="STOP")


def test_epics_put_is_set_config_by_its_ca_user_refused_with_the_reason_frozen_in_a_run_and_nothing_else_writable(
        bridge):
    s = bridge.s
    bridge.until(lambda: bridge.value("knob:config:gain") == 1, what="knob's gain served")
    bridge.put("knob:config:gain", 5)
    deliveries = [json.loads(line) for line in bridge.record.read_text().splitlines()]
    assert deliveries[-1]["config"]["gain"] == 5
    change = s.op.request("run", "config_log", program="knob", n=1)[-1]
    assert change["changes"] == {"gain": [1, 5]} and change["accepted"]
    assert change["by"].startswith("epics (") and "@" in change["by"], change
    bridge.until(lambda: bridge.value("knob:config:gain") == 5, what="the new gain served")

    with pytest.raises(ErrorResponseReceived, match="refused: a gain of 7 is not allowed"):
        bridge.put("knob:config:gain", 7)              # the program says no
    with pytest.raises(ErrorResponseReceived, match="bad_config"):
        bridge.put("knob:config:gain", 11)             # the schema says no
    with pytest.raises(ErrorResponseReceived, match="cannot write"):
        bridge.put("run:state", 1)                     # served (from the start), not writable
    assert bridge.value("knob:config:gain") == 5

    s.op.request("run", "prepare_run", timeout=20)
    s.op.request("run", "begin_run", timeout=20)
    try:
        with pytest.raises(ErrorResponseReceived, match="bad_state"):
            bridge.put("knob:config:gain", 3)          # frozen during a run
        bridge.put("knob:config:threshold", 0.75)     # live
        assert s.op.request("run", "config", program="knob")["values"]["threshold"] == 0.75
    finally:
        s.op.request("run", "end_run", timeout=20)
    bridge.put("knob:config:mode", "slow")
    assert s.op.request("run", "config", program="knob")["values"]["mode"] == "slow"
    bridge.until(lambda: (r := bridge.read("knob:config:mode")) and enum_text(r) == "slow", what="mode slow served")


def test_epics_imports_an_ioc_channel_into_the_bus_history_and_alarms_missing_while_it_is_down(bridge):
    s = bridge.s

    def t1():
        held = bridge.retained("epics.facility.t1")
        return held["data"] if held else None

    def standing(alarm):
        return {a["alarm"]: a for a in s.op.request("run", "alarms")["alarms"]}.get(alarm, {}).get("state")

    def raised(alarm):
        return sum(1 for topic, e in list(s.events.items) if topic == "event.alarm_raised" and e["alarm"] == alarm)

    ioc = bridge.start_ioc()
    try:
        bridge.until(lambda: isinstance(t1(), float) and t1() >= 100, 30, "the IOC's T1 on the bus")
        bridge.until(lambda: s.op.request("historian", "history", name="epics.facility.t1", since=-120)
                     .get("epics.facility.t1"), what="T1 in the history")
        s.wait_event("event.alarm_raised", alarm="t1_high")
        reading = bridge.read("epics:facility:t1")      # exported again, with the units the experiment gives
        assert reading.data[0] >= 100 and reading.metadata.units == b"K"
        bridge.until(lambda: standing("t1_missing") != "active", what="t1_missing not standing")
        before = raised("t1_missing")

        os.kill(ioc.pid, signal.SIGKILL)
        ioc.wait(10)
        bridge.until(lambda: t1() is None, what="T1 published as missing")
        bridge.until(lambda: raised("t1_missing") > before, 20, "t1_missing raised")

        ioc = bridge.start_ioc()
        bridge.until(lambda: isinstance(t1(), float), 30, "T1 again, the IOC restarted")
        bridge.until(lambda: standing("t1_missing") != "active", what="t1_missing cleared")
        assert s.op.request("epics", "status")["imports"]["facility.t1"]["connected"] is True
    finally:
        stop_process(ioc)


def test_epics_program_sigkilled_is_restarted_and_a_monitor_resumes(bridge):
    s = bridge.s
    s.op.publish("values", {"t": 50.0, "unit": "K"}, retain=True)
    monitor = Monitor("op:values:t")
    try:
        bridge.until(lambda: 50.0 in monitor.values, what="the monitor's first value")
        killed = s.program("epics")["pid"]
        os.kill(killed, signal.SIGKILL)
        s.wait_state("epics", "RUNNING", 30)
        bridge.until(lambda: s.program("epics")["pid"] != killed, what="a new epics program")
        published = [51.0]

        def resumed():
            if published[-1] in monitor.values:
                return True
            published.append(published[-1] + 1)
            s.op.publish("values", {"t": published[-1], "unit": "K"}, retain=True)
            s.op.poll(0.3)
            return False
        bridge.until(resumed, 30, "the monitor to resume")
    finally:
        monitor.close()


# --- the rules without I/O --------------------------------------------------------------------------------


def test_board_names_numbers_as_the_protocol_does_and_finds_their_units():
    data = {"t": 1.5, "unit": "K", "inner": {"p": 2, "units": "mbar", "deep": [3, True, None]}, "flag": True,
            "nan": float("nan"), "list": [4, 5]}
    found = boards.numbers_with_units("cryo.values", data)
    assert [(n, v) for n, v, _ in found] == protocol.published_numbers("cryo.values", data, [])
    units = {n: u for n, _, u in found}
    assert units == {"cryo.values.t": "K", "cryo.values.inner.p": "mbar", "cryo.values.inner.deep.0": "mbar",
                     "cryo.values.list.0": "K", "cryo.values.list.1": "K"}


def test_board_severity_is_the_worst_active_alarm_on_the_number_and_invalid_once_its_publisher_left():
    watches = [boards.Watch("hot", "cryo.values.t", "above", 10.0), boards.Watch("warm", "cryo.values.t", "above", 5.0),
               boards.Watch("quiet", "cryo.values.t", "missing", 30.0)]
    board = boards.Board("X:", ["cryo.values.*"], [], watches)
    board.take_publication("cryo", "values", {"t": 20.0}, 100.0)
    board.take_alarm({"alarm": "warm", "severity": "warning", "state": "active"})
    assert board.served["cryo.values.t"].severity == "MINOR" and board.served["cryo.values.t"].status == "HIGH"
    board.take_alarm({"alarm": "hot", "severity": "alarm", "state": "active"})
    assert (board.served["cryo.values.t"].severity, board.served["cryo.values.t"].status) == ("MAJOR", "HIHI")
    board.take_alarms([{"alarm": "quiet", "severity": "warning", "state": "active"},
                       {"alarm": "hot", "severity": "alarm", "state": "cleared"}])
    assert (board.served["cryo.values.t"].severity, board.served["cryo.values.t"].status) == ("MINOR", "COMM")
    board.publisher_gone("cryo")
    assert (board.served["cryo.values.t"].severity, board.served["cryo.values.t"].status) == ("INVALID", "COMM")
    board.take_publication("cryo", "values", {"t": 21.0}, 101.0)
    assert board.served["cryo.values.t"].severity == "MINOR"


def test_board_keeps_every_change_in_order_and_tells_news_from_a_time_that_moved():
    board = boards.Board("X:", ["a.v.*"], [], [])
    for ts, value in enumerate((1.0, 2.0, 2.0, 3.0)):
        board.take_publication("a", "v", {"n": value}, float(ts))
    changes = board.take_changes()
    assert [(c.value, c.ts, news) for c, news in changes] == [(1.0, 0.0, True), (2.0, 1.0, True), (2.0, 2.0, False),
                                                              (3.0, 3.0, True)]
    assert board.take_changes() == []


def test_board_serves_exported_names_only_and_refuses_names_that_cannot_be_process_variables():
    board = boards.Board("X:", ["a.v.n", "a.w*", "run.state"], [], [])
    board.take_publication("a", "v", {"n": 1, "m": 2, "bad name": 3}, 1.0)
    board.take_publication("a", "w", {"bad name": 3}, 1.0)
    board.take_run("READY", 12, 2.0)
    assert {s.pv for s in board.served.values()} == {"X:a:v:n", "X:run:state"}   # run.number is not exported
    assert board.unservable == ["a.w.bad name"]


def test_board_types_writable_settings_from_the_schema_and_turns_puts_into_settings():
    schema = {"type": "object", "properties": {
        "gain": {"type": "integer", "minimum": 1, "maximum": 10}, "on": {"type": "boolean"},
        "mode": {"enum": ["fast", "slow"]}, "curve": {"type": "array"}}}
    board = boards.Board("X:", [], ["amp.config.gain", "amp.config.on", "amp.config.mode", "amp.config.curve"], [])
    board.take_settings("amp", {"values": {"gain": 3, "on": False, "mode": "fast", "curve": [1]}, "schema": schema},
                        1.0)
    gain, on, mode = (board.served[f"amp.config.{s}"] for s in ("gain", "on", "mode"))
    assert (gain.kind, gain.limits, gain.writable) == ("integer", (1, 10), True)
    assert (on.kind, on.value, mode.kind, mode.choices) == ("enum", "false", "enum", ("fast", "slow"))
    assert board.unservable == ["amp.config.curve"]
    assert (boards.setting_value(gain, 7.0), boards.setting_value(on, "true"), boards.setting_value(mode, "slow")) \
        == (7, True, "slow")
    assert (boards.setting_value(on, 1), boards.setting_value(mode, 1)) == (True, "slow")   # enums' indexes
    with pytest.raises(ValueError):
        boards.setting_value(mode, 2)
    board.take_config_changed("amp", {"gain": [3, 4]}, 2.0)
    assert board.served["amp.config.gain"].value == 4
    assert boards.put_by("anna", "daq1") == "epics (anna@daq1)" and len(boards.put_by("u" * 80, "h")) == 64


def test_imports_publish_values_missing_while_disconnected_or_invalid_and_again_while_unchanged():
    imports = Imports([experiments.EpicsImport("LAB:T1", "facility.t1", "K")], republish_s=5.0)
    assert imports.connection("LAB:T1", True, 0.0) == []
    assert imports.took("LAB:T1", [101.5], "NO_ALARM", 1.0) == [("facility.t1", 101.5)]
    assert imports.due(5.9) == [] and imports.due(6.0) == [("facility.t1", 101.5)]
    assert imports.took("LAB:T1", [102.0], "INVALID", 7.0) == [("facility.t1", None)]
    assert imports.due(20.0) == []                          # nothing known: nothing again
    imports.took("LAB:T1", [b"on", b"off"], "MINOR", 21.0)
    assert imports.channels["LAB:T1"].value == ["on", "off"]
    assert imports.connection("LAB:T1", False, 22.0) == [("facility.t1", None)]
    assert imports.due(40.0) == []
    imports.took_units("LAB:T1", "degC")                    # the experiment's units stand
    assert imports.channels["LAB:T1"].units == "K"


# --- the experiment's epics section ---------------------------------------------------------------------------


def load(tmp_path, epics, alarms=None, programs=None):
    path = write_experiment(tmp_path, "epics-section", alarms=alarms, programs=programs or {
        "bias": {"cmd": ["python", "-m", "clients.sim.bias", "--name", "bias"], "client": "bias"},
        "epics": {"cmd": ["python", "-m", "clients.epics"], "client": "epics"}})
    description = json.loads(path.read_text())
    description["epics"] = epics
    path.write_text(json.dumps(description))
    return experiments.load(path)


def problems(tmp_path, epics, **kw):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, epics, **kw)
    return caught.value.problems


def test_epics_section_loads_with_its_defaults(tmp_path):
    spec = load(tmp_path, {"prefix": "DAMICM:", "export": ["bias.config.volts", "cryo.values.*"],
                           "writable": ["bias.config.volts"],
                           "import": {"LAB:CRYO:T1": {"as": "facility.cryo_t1", "units": "K"}}}).epics
    assert (spec.prefix, spec.client, spec.interfaces, spec.addresses, spec.server_port, spec.repeater_port,
            spec.republish_s) == ("DAMICM:", "epics", ("127.0.0.1",), ("127.255.255.255",), 5064, 5065, 5.0)
    assert spec.imports == (experiments.EpicsImport("LAB:CRYO:T1", "facility.cryo_t1", "K"),)
    assert load(tmp_path, {"prefix": "X:"}).epics.export == ()


def test_epics_section_refuses_what_it_cannot_serve_safely_with_clear_problems(tmp_path):
    found = problems(tmp_path, {"prefix": "DAMICM:", "export": ["cryo.values.*"],
                                "writable": ["bias.config.volts", "hv.config.volts"],
                                "interfaces": ["192.0.2.2"], "import": {"DAMICM:X": {"as": "x"}}})
    assert "epics.writable.0: 'bias.config.volts' is not exported: add it (or a pattern covering it) to " \
           "epics.export" in found
    assert "epics.writable.1: 'hv' is no program of the experiment" in found
    assert any(p.startswith("epics.interfaces: 192.0.2.2 can be reached from the network") for p in found)
    assert any(p.startswith("epics.import.DAMICM:X: 'DAMICM:' is this experiment's own prefix") for p in found)
    found = problems(tmp_path, {"prefix": "D:", "republish": 5, "import": {"L:T1": {"as": "t1"}, "L:T2": {"as": "t1"}}},
                     alarms={"cold": {"value": "t1", "below": 4}, "gone": {"value": "epics.t1", "missing": 5}})
    assert "epics.import.L:T2.as: 't1' is already the name of L:T1" in found
    assert "alarms.cold.value: 't1' is imported from L:T1, published as epics.t1: name it so" in found
    assert any(p.startswith("alarms.gone.missing: 5 s is not more than epics.republish (5 s)") for p in found)
    found = problems(tmp_path, {"prefix": "bad prefix", "export": ["a..b"], "import": {"L:T1": {"units": "K"}}})
    assert any(p.startswith("epics.prefix:") for p in found) and any(p.startswith("epics.export.0:") for p in found)
    assert "epics.import.L:T1: 'as' is required" in found
    exposed = {"prefix": "D:", "writable": ["bias.config.volts"], "export": ["bias.config.*"],
               "interfaces": ["192.0.2.2"], "addresses": ["192.0.2.255"]}
    assert load(tmp_path, {**exposed, "insecure": True}).epics.interfaces == ("192.0.2.2",)
    assert load(tmp_path, {**exposed, "writable": []}).epics.writable == ()   # read-only off loopback: no keys needed
