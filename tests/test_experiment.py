"""Loading experiment descriptions: defaults, paths, and every problem listed at once."""

import json
import re
import signal
import subprocess
import sys

import pytest

import experiments
from experiments import NotifyRule
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


def program(**fields):
    return {"cmd": ["python", "-c", "pass"], **fields}


def test_program_defaults_and_python_means_our_interpreter(tmp_path):
    (tmp_path / "sub").mkdir()
    exp = experiments.load(write(tmp_path, {"programs": {"a": program(cwd="sub")}}))
    spec = exp.program("a")
    assert spec.argv[0] == sys.executable and spec.argv[1:] == ("-c", "pass")
    assert (spec.restart, spec.client, spec.participant, spec.host) == ("always", None, False, "local")
    assert (spec.backoff.initial_s, spec.backoff.max_s, spec.backoff.factor) == (0.1, 30.0, 2.0)
    assert spec.stop_signal == signal.SIGTERM and spec.stop_timeout_s == 5.0
    assert spec.cwd == tmp_path / "sub"
    assert exp.logs.max_bytes == 10485760 and exp.logs.keep == 5


def test_start_order_follows_dependencies_then_file_order(tmp_path):
    exp = experiments.load(write(tmp_path, {"programs": {
        "lta1": program(depends_on=["cryo", "gauge"]), "monitor": program(),
        "cryo": program(), "gauge": program(depends_on=["cryo"])}}))
    assert [p.name for p in exp.programs] == ["monitor", "cryo", "gauge", "lta1"]


def test_restart_enum_error_reads_as_a_sentence(tmp_path):
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"programs": {"lta1": program(restart="sometimes")}}))
    assert info.value.problems == ['programs.lta1.restart: "sometimes" is not one of always, on-failure, never']


def test_cross_checks_listed_with_schema_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"programs": {
            "a": program(depends_on=["b"], client="shared"),
            "b": program(depends_on=["c"]),
            "c": program(depends_on=["a"], client="shared"),
            "d": program(depends_on=["nothing"], host="daq9", stop_timeout=-1)}}))
    problems = info.value.problems
    assert "programs.d.depends_on: 'nothing' names no program" in problems
    assert "programs: dependency cycle a -> b -> c -> a" in problems
    assert "programs.c.client: 'shared' is already the client name of program 'a'" in problems
    assert "programs.d.host: 'daq9' is not a known host (local)" in problems
    assert "programs.d.stop_timeout: -1 must be more than 0" in problems
    assert len(problems) == 5


def test_self_dependency_is_a_cycle(tmp_path):
    with pytest.raises(ConfigError, match="dependency cycle a -> a"):
        experiments.load(write(tmp_path, {"programs": {"a": program(depends_on=["a"])}}))


def test_declared_host_is_known(tmp_path):
    exp = experiments.load(write(tmp_path, {"hosts": {"daq2": {}}, "programs": {"a": program(host="daq2")}}))
    assert exp.program("a").host == "daq2" and "daq2" in exp.hosts


def test_libabcd_form_loads_as_restart_always(tmp_path):
    exp = experiments.load(write(tmp_path, {"run": {
        "client1": {"cmd": "./exec-client.py client1 --label 'two words'"},
        "client2": {"cmd": "./exec-client.py client2", "host": "daq2"}}}))
    first = exp.program("client1")
    assert first.argv == ("./exec-client.py", "client1", "--label", "two words")
    assert first.restart == "always" and exp.program("client2").host == "daq2"
    assert any("exec-client.py" in w and "not found" in w for w in exp.warnings)


def test_missing_command_is_a_warning_not_an_error(tmp_path):
    exp = experiments.load(write(tmp_path, {"programs": {"a": {"cmd": "no-such-command-here --x"}}}))
    assert exp.warnings == ("programs.a.cmd: 'no-such-command-here' is not found on this host",)


def test_run_py_check_prints_plan_exit_0(tmp_path):
    path = write(tmp_path, {"name": "plan", "programs": {
        "lta1": program(depends_on=["cryo"], client="lta1"), "cryo": program(client="cryo")}})
    result = subprocess.run([sys.executable, "run.py", "--check", str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"experiment plan ({path})"
    order = [m.group(1) for m in map(re.compile(r"^\s*\d+\. (\S+)").match, lines) if m]
    assert order == ["cryo", "lta1"]
    assert "after cryo" in result.stdout


def test_run_py_check_invalid_exit_2_lists_problems(tmp_path):
    path = write(tmp_path, {"programs": {"a": program(depends_on=["ghost"], restart="sometimes")}})
    result = subprocess.run([sys.executable, "run.py", "--check", str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "2 problem(s)" in result.stderr
    assert "programs.a.depends_on: 'ghost' names no program" in result.stderr
    assert 'programs.a.restart: "sometimes" is not one of always, on-failure, never' in result.stderr


@pytest.mark.parametrize("router", ["tcp://0.0.0.0:9820", "tcp://*:9820", "tcp://192.168.1.10:9820", "tcp://eth0:9820"])
def test_a_bus_reachable_from_the_network_needs_keys_or_insecure(tmp_path, router):
    raw = {"name": "exposed", "server": {"router": router}}
    with pytest.raises(ConfigError) as refused:
        experiments.from_dict(raw, tmp_path / "exposed.json")
    assert f"server.router: {router} can be reached from the network" in str(refused.value)
    allowed = experiments.from_dict({**raw, "server": {"router": router, "insecure": True}}, tmp_path / "x.json")
    assert allowed.server.insecure and allowed.server.exposed() == [router]
    keyed = experiments.from_dict({**raw, "server": {"router": router, "curve": {
        "server_key": "keys/server.key", "clients": "keys/clients"}}}, tmp_path / "y.json")
    assert keyed.server.curve.server_key == tmp_path / "keys" / "server.key"


@pytest.mark.parametrize("router", ["tcp://127.0.0.1:9820", "tcp://localhost:9820", "tcp://127.3.4.5:1"])
def test_a_loopback_bus_needs_no_keys(tmp_path, router):
    spec = experiments.from_dict({"name": "local", "server": {"router": router}}, tmp_path / "local.json")
    assert spec.server.exposed() == [] and spec.server.curve is None


@pytest.mark.parametrize("raw, problems", [
    ({"run": None, "hosts": None}, ["hosts: null is not of type object", "run: null is not of type object"]),
    ({"run": {}, "hosts": "0"}, ['hosts: "0" is not of type object']),
    ({"run": {"a": {"cmd": "x", "host": 5}}}, ["run.a.host: 5 is not of type string"]),
])
def test_a_malformed_libabcd_form_is_explained_not_a_crash(tmp_path, raw, problems):
    with pytest.raises(ConfigError) as refused:
        experiments.from_dict(raw, tmp_path / "odd.json")
    assert refused.value.problems == problems


def test_a_client_reads_the_bus_settings_without_the_programs(tmp_path):
    path = tmp_path / "half.json"
    path.write_text(json.dumps({"name": "half", "server": {"beacon": {"port": 23456}},
                                "programs": {"a": {"cmd": ["x"], "depends_on": ["a"]}, "b": {"restart": "maybe"}}}))
    with pytest.raises(ConfigError):
        experiments.load(path)  # the whole description is invalid ...
    bus = experiments.bus_settings(path)  # ... but what a client needs is there
    assert (bus.name, bus.beacon.port, bus.beacon.address, bus.curve) == ("half", 23456, "127.255.255.255", None)


def test_invalid_bus_settings_are_refused_with_their_path(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "server": {"beacon": {"port": "x"}}}))
    with pytest.raises(ConfigError) as refused:
        experiments.bus_settings(path)
    assert refused.value.problems == ['server.beacon.port: "x" is not of type integer']


def test_a_supervisord_off_loopback_needs_credentials(tmp_path):
    def load(host):
        path = tmp_path / "hosts.json"
        path.write_text(json.dumps({"name": "h", "hosts": {"daq2": host},
                                    "programs": {"a": {"cmd": ["x"], "host": "daq2"}}}))
        return experiments.load(path)
    with pytest.raises(ConfigError) as refused:
        load({"supervisord": "http://10.0.0.2:9001/RPC2"})
    assert refused.value.problems == [
        "hosts.daq2.supervisord: http://10.0.0.2:9001/RPC2 is off loopback: give hosts.daq2.username and "
        "hosts.daq2.password_file (supervisord's HTTP interface has no encryption: keep it on a private DAQ "
        "network, with a password)"]
    host = load({"supervisord": "http://10.0.0.2:9001/RPC2", "username": "orbit",
                 "password_file": "keys/daq2.pass"}).hosts["daq2"]
    assert (host.supervisord, host.username, host.password_file) == (
        "http://10.0.0.2:9001/RPC2", "orbit", (tmp_path / "keys" / "daq2.pass").resolve())
    local = load({"supervisord": "http://127.0.0.1:9001/RPC2"}).hosts["daq2"]
    assert (local.username, local.password_file) == (None, None)


def test_the_libabcd_gateway_is_off_by_default_and_on_loopback_unless_told_otherwise(tmp_path):
    assert experiments.from_dict({"name": "plain"}, tmp_path / "p.json").server.legacy is None
    on = experiments.from_dict({"name": "on", "server": {"legacy": {"port": 9818}}}, tmp_path / "on.json")
    assert on.server.legacy == experiments.LegacySpec("127.0.0.1", 9818, 30.0, False)
    with pytest.raises(ConfigError) as refused:
        experiments.from_dict({"name": "open", "server": {"legacy": {"address": "0.0.0.0"}}}, tmp_path / "o.json")
    assert "server.legacy.address: 0.0.0.0 can be reached from the network, and libABCD's wire has no " \
           "encryption" in str(refused.value)
    told = experiments.from_dict({"name": "open", "server": {"legacy": {"address": "0.0.0.0", "insecure": True}}},
                                 tmp_path / "t.json")
    assert told.server.legacy.insecure
    with pytest.raises(ConfigError) as short:
        experiments.from_dict({"name": "short", "server": {"legacy": {"timeout": 5}}}, tmp_path / "s.json")
    assert "server.legacy.timeout" in str(short.value)  # never shorter than its 13 s ping period


def test_liveness_probes_load_with_their_defaults(tmp_path):
    exp = experiments.load(write(tmp_path, {"programs": {
        "a": program(liveness={"exec": ["python", "-c", "pass"]}),
        "b": program(liveness={"tcp": "127.0.0.1:7101", "send": "status\n", "expect": "ok", "period": 2}),
        "c": program(liveness={"http": "http://127.0.0.1:8080/health", "failures": 1, "initial_delay": 5})}}))
    a, b, c = (exp.program(n).liveness for n in "abc")
    assert (a.kind, a.target[0], a.period_s, a.timeout_s, a.failures, a.initial_delay_s) == \
        ("exec", sys.executable, 10.0, 1.0, 3, 0.0)   # Kubernetes' defaults; python is our interpreter
    assert (b.kind, b.target, b.send, b.expect, b.period_s) == ("tcp", "127.0.0.1:7101", b"status\n", b"ok", 2.0)
    assert (c.kind, c.target, c.failures, c.initial_delay_s) == ("http", "http://127.0.0.1:8080/health", 1, 5.0)
    assert exp.program("damicm") is None and experiments.load("damicm").program("board1").liveness.kind == "tcp"


def test_a_malformed_liveness_probe_is_refused_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"programs": {
            "a": program(liveness={"period": 5}),
            "b": program(liveness={"tcp": "127.0.0.1:7101", "http": "http://127.0.0.1/"}),
            "c": program(liveness={"http": "http://127.0.0.1/", "send": "x"}),
            "d": program(liveness={"tcp": "127.0.0.1:99999", "expect": "ok"}),
            "e": program(liveness={"tcp": "no port", "timeout": 0, "failures": 0}),
            "f": program(liveness={"exec": [], "grpc": 1})}}))
    assert sorted(info.value.problems) == sorted([
        "programs.a.liveness: give exactly one probe of exec, tcp, http",
        "programs.b.liveness: give exactly one probe of exec, tcp, http (it has tcp, http)",
        "programs.c.liveness.send: only with a tcp probe",
        "programs.d.liveness.expect: only with send (the answer to what was sent)",
        "programs.d.liveness.tcp: port 99999 is not from 1 to 65535",
        'programs.e.liveness.tcp: "no port" does not match ^.+:[0-9]{1,5}$',
        "programs.e.liveness.timeout: 0 must be more than 0",
        "programs.e.liveness.failures: 0 must be at least 1",
        "programs.f.liveness.exec: [] should be non-empty",
        "programs.f.liveness: unknown key(s) ('grpc' was unexpected)"])


def test_a_catalog_section_loads_and_a_malformed_one_is_refused_with_its_path(tmp_path):
    exp = experiments.load(write(tmp_path, {"programs": {}, "catalog": {
        "values": ["cryo.values.temperature", {"value": "bias.values.volts", "name": "bias_output", "units": "V"}],
        "rules": [{"flag": "bad", "when": ["result!=ended"], "why": "not as planned"}]}}))
    assert [(v.name, v.value, v.units) for v in exp.catalog.values] == [
        ("temperature", "cryo.values.temperature", None), ("bias_output", "bias.values.volts", "V")]
    assert [(r.flag, r.when, r.why) for r in exp.catalog.rules] == [("bad", ("result!=ended",), "not as planned")]
    assert experiments.load(write(tmp_path, {"programs": {}})).catalog.values == ()
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"programs": {}, "catalog": {
            "values": ["cryo.values.temperature", {"value": "other.values.temperature"}],
            "rules": [{"flag": "bad", "when": ["temperature hot"]}]}}))
    assert sorted(info.value.problems) == sorted([
        "catalog.values.1: the name 'temperature' is taken by catalog.values.0 (give one a \"name\")",
        "catalog.rules.0.when.0: 'temperature hot' is no condition KEY OP VALUE (OP one of = != < <= > >= ~), "
        "e.g. \"temperature.max<145\""])
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"programs": {}, "catalog": {"rules": [{"flag": "maybe", "when": []}]}}))
    assert any(p.startswith("catalog.rules.0.flag") for p in info.value.problems), info.value.problems


def test_the_earlier_name_of_participant_still_loads_with_a_warning(tmp_path):
    exp = experiments.load(write(tmp_path, {"programs": {"a": program(client="a", run=True),
                                                         "b": program(client="b", participant=True), "c": program()}}))
    assert [p.participant for p in exp.programs] == [True, True, False]
    assert "programs.a.run: now called participant (read as such)" in exp.warnings
    assert not [w for w in exp.warnings if w.startswith(("programs.b", "programs.c"))]


def secrets_file(tmp_path, secrets, mode=0o600):
    path = tmp_path / "notify-secrets.json"
    path.write_text(json.dumps(secrets))
    path.chmod(mode)
    return path


def test_notify_loads_with_its_rules_retries_heartbeat_and_the_delivery_alarm(tmp_path):
    secrets = secrets_file(tmp_path, {"MAIL_PASSWORD": "s3cret"})
    exp = experiments.load(write(tmp_path, {"notify": {
        "routes": {"shift": ["mailto://orbit:${MAIL_PASSWORD}@mail.example.org?to=shift@example.org"],
                   "experts": ["json://127.0.0.1:8090/hook", "orbitfile://experts.jsonl"]},
        "secrets": secrets.name,
        "rules": [{"route": "shift", "severity": "alarm", "escalate_after": 900, "escalate_to": "experts",
                   "repeat": 3600},
                  {"route": "shift", "alarms": ["program.*"], "clear": False}],
        "retry": {"first": 1, "alarm_after": 3},
        "heartbeat": {"url": "https://hc.example.org/ping/abc", "every": 30}}}))
    notify = exp.notify
    assert dict(notify.routes) == {"shift": ("mailto://orbit:${MAIL_PASSWORD}@mail.example.org?to=shift@example.org",),
                                   "experts": ("json://127.0.0.1:8090/hook", "orbitfile://experts.jsonl")}
    assert notify.secrets == secrets   # the URL keeps its ${NAME}: the secret is read only when sending
    assert notify.rules == (NotifyRule("shift", "alarm", (), 900, "experts", 3600, True),
                            NotifyRule("shift", None, ("program.*",), None, None, None, False))
    assert (notify.link, notify.client) == ("http://127.0.0.1:8080", "notifier")
    assert (notify.retry_first_s, notify.retry_max_s, notify.alarm_after) == (1.0, 300.0, 3)
    assert (notify.heartbeat_url, notify.heartbeat_s, notify.heartbeat_quiet_only) == \
        ("https://hc.example.org/ping/abc", 30.0, True)
    delivery = next(a for a in exp.alarms if a.name == "notify.delivery")
    assert (delivery.value, delivery.kind, delivery.limit, delivery.severity) == \
        ("notifier.delivery.failing", "above", 0.0, "alarm")
    assert experiments.load(write(tmp_path, {})).notify is None


def test_notify_rules_naming_no_route_and_a_secrets_file_others_can_read_are_refused_with_their_paths(tmp_path):
    secrets = secrets_file(tmp_path, {"TOKEN": "abc"}, mode=0o644)
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"notify": {
            "routes": {"shift": ["ntfy://${TOKEN}@ntfy.example.org/orbit", "json://${HOOK_KEY}@127.0.0.1/hook"]},
            "secrets": secrets.name,
            "rules": [{"route": "night"}, {"route": "shift", "escalate_after": 600},
                      {"route": "shift", "escalate_after": 600, "escalate_to": "boss"}]}}))
    assert sorted(info.value.problems) == sorted([
        "notify.rules.0.route: 'night' is not a route (shift)",
        "notify.rules.1: escalate_after and escalate_to go together",
        "notify.rules.2.escalate_to: 'boss' is not a route (shift)",
        f"notify.secrets: {secrets} can be read by others (mode 644): chmod 600 {secrets}",
        f"notify.routes: ${{HOOK_KEY}} is not in {secrets}"])


def test_notify_secrets_in_a_url_without_a_secrets_file_are_refused_with_their_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        experiments.load(write(tmp_path, {"notify": {"routes": {"shift": ["tgram://${BOT_TOKEN}/${CHAT_ID}"]}}}))
    assert info.value.problems == ["notify.routes: ${BOT_TOKEN} needs notify.secrets, a file that holds it",
                                   "notify.routes: ${CHAT_ID} needs notify.secrets, a file that holds it"]
