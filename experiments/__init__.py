"""Experiment descriptions: find the JSON file, validate it, fill defaults, freeze it.

Owns the format of SPEC.md ("The experiment description") and its JSON Schema
(`schema.json` beside this file). Turns a file into frozen specs; must not start
anything.
"""

import copy
import json
import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import jsonschema

from experiments import checks, libabcd
from experiments.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("schema.json")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A program with a client name that has not registered this long after the server's timeout
# counts as hung: as long as a registered one may stay silent, plus time to start Python.
START_ALLOWANCE_S = 5.0


class NotFound(ConfigError):
    """No file for the experiment name or path."""


@dataclass(frozen=True)
class BeaconSpec:
    address: str
    port: int
    interval_s: float


@dataclass(frozen=True)
class CurveSpec:
    server_key: Path      # public key file; the secret key is beside it, <file>_secret
    clients: Path         # folder of allowed client public keys
    names: MappingProxyType   # key name -> client names (glob patterns) it may register


@dataclass(frozen=True)
class LegacySpec:
    """The gateway for libABCD 0.1 clients: where it listens, when a silent one is lost."""
    address: str
    port: int
    timeout_s: float
    insecure: bool = False


@dataclass(frozen=True)
class ReplaySpec:
    """What the server keeps of recent publications for `_replay`: a window, a budget per topic and in all."""
    window_s: float = 120.0
    topic_bytes: int = 4 << 20
    max_bytes: int = 16 << 20


@dataclass(frozen=True)
class ServerSpec:
    router: str
    events: str
    beacon: BeaconSpec
    heartbeat_s: float
    timeout_s: float
    stale_after_s: float
    max_message_bytes: int
    insecure: bool = False
    curve: object = None     # CurveSpec, or None for a plain (loopback) bus
    client_rate: float = 100000.0   # messages per second one client may send
    max_clients: int = 10000
    max_pending: int = 1000
    legacy: object = None    # LegacySpec, or None: no gateway
    replay: ReplaySpec = ReplaySpec()

    def exposed(self):
        """The addresses that can be reached from beyond this machine."""
        return [a for a in (self.router, self.events) if not checks.is_loopback(a)]


@dataclass(frozen=True)
class PathsSpec:
    logs: Path
    data: Path
    state: Path


@dataclass(frozen=True)
class BackoffSpec:
    initial_s: float
    max_s: float
    factor: float


@dataclass(frozen=True)
class LivenessSpec:
    """A probe of a program, run on its host: `kind` exec (target: argv), tcp ("host:port") or http (a URL);
    failing `failures` times in a row, `period_s` apart, counts as a hang."""
    kind: str
    target: object
    period_s: float = 10.0
    timeout_s: float = 1.0
    failures: int = 3
    initial_delay_s: float = 0.0
    send: object = None      # tcp: bytes written after connecting; alive when an answer comes
    expect: object = None    # tcp with send: bytes the answer must hold

    def describe(self):
        target = " ".join(self.target) if self.kind == "exec" else self.target
        return f"{self.kind} {target}"


@dataclass(frozen=True)
class Participation:
    """How a participant takes part in run transitions (the program's `transitions`; the schema's defaults)."""
    order: int = 500              # equal orders asked together; lower first on the way up, higher on the way down
    defer_limit_s: float = 60.0   # how long it may hold a transition while it reports progress
    past_limit: str = "fail"      # past that: "fail" the transition, or "go_on" without it


@dataclass(frozen=True)
class ChildSpec:
    """One program of the experiment, as the supervisor runs it."""
    name: str
    argv: tuple
    restart: str
    depends_on: tuple
    client: object
    participant: bool     # its client takes part in run transitions
    backoff: BackoffSpec
    max_restarts: int
    restart_window_s: float
    restart_dependents: bool
    start_timeout_s: float
    stop_signal: signal.Signals
    stop_timeout_s: float
    env: MappingProxyType
    cwd: Path
    host: str
    # first settings: a change is no reason to restart the program (the run controller keeps the current ones)
    config: MappingProxyType = field(default_factory=lambda: MappingProxyType({}), compare=False)
    liveness: object = None   # LivenessSpec, or None
    # how its client takes part in run transitions (order, deferral): no reason to restart it when it changes
    participation: Participation = field(default=Participation(), compare=False)


@dataclass(frozen=True)
class HostSpec:
    """Another host of the experiment, whose programs run under its supervisord."""
    name: str
    supervisord: str          # its XML-RPC address
    username: object = None
    password_file: object = None   # a Path, or None on loopback without credentials


@dataclass(frozen=True)
class LogRotation:
    max_bytes: int
    keep: int


@dataclass(frozen=True)
class HistorySpec:
    retention_days: float = 30.0


@dataclass(frozen=True)
class CatalogValue:
    """A published number the run catalog keeps for each run, by `name` in its queries."""
    name: str
    value: str
    units: object = None


@dataclass(frozen=True)
class CatalogRule:
    """Flag a complete run `flag` when every condition of `when` (the catalog's query words) holds."""
    flag: str
    when: tuple
    why: object = None


@dataclass(frozen=True)
class CatalogSpec:
    values: tuple = ()       # CatalogValues
    rules: tuple = ()        # CatalogRules
    historian: str = "historian"


@dataclass(frozen=True)
class AlarmSpec:
    """A condition on a published number that raises an alarm when it holds `hold_s` seconds."""
    name: str
    value: str
    kind: str             # above, below, band, unchanged, missing
    limit: object         # a number (seconds for unchanged and missing), or (low, high) for band
    relative_to: object   # another number's name the limits count from, or None
    hold_s: float
    severity: str
    message: str
    actions: tuple        # "log", "publish", "end_run", "pause_run", or {"send": {...}}
    resume: str = "cleared"   # a run it paused resumes once it "cleared", "acked" (and cleared), or "never"


@dataclass(frozen=True)
class NotifyRule:
    route: str
    severity: object = None       # "warning", "alarm", or None: both
    alarms: tuple = ()            # names, or prefixes ending in *; empty: every alarm
    escalate_after_s: object = None
    escalate_to: object = None
    repeat_s: object = None
    clear: bool = True

    def matches(self, alarm, severity):
        if self.severity is not None and severity != self.severity:
            return False
        return not self.alarms or any(alarm == a or (a.endswith("*") and alarm.startswith(a[:-1]))
                                      for a in self.alarms)


@dataclass(frozen=True)
class NotifySpec:
    """Who is told of alarms: routes of Apprise URLs (with ${NAME}s from the secrets file), rules, retries, the
    web page's address for links, and the dead man's switch."""
    routes: MappingProxyType      # name -> tuple of URL templates
    rules: tuple                  # NotifyRules
    secrets: object = None        # a Path, or None
    link: str = "http://127.0.0.1:8080"
    client: str = "notifier"
    retry_first_s: float = 2.0
    retry_max_s: float = 300.0
    alarm_after: int = 5
    heartbeat_url: object = None
    heartbeat_s: float = 60.0
    heartbeat_quiet_only: bool = True


DELIVERY_ALARM = "notify.delivery"


@dataclass(frozen=True)
class EpicsImport:
    """A channel of another IOC, published on the bus by the epics program on the topic `name` (its `as`)."""
    pv: str
    name: str
    units: object = None     # its units as the experiment gives them, or None: the IOC's


@dataclass(frozen=True)
class EpicsSpec:
    """The epics program: what it serves as process variables (published numbers matching `export`, the run
    state and number, the `writable` settings) under `prefix`, what it imports, and where Channel Access goes."""
    prefix: str
    export: tuple = ()       # names, or prefixes ending in *
    imports: tuple = ()      # EpicsImports
    writable: tuple = ()     # <program>.config.<setting>
    client: str = "epics"
    interfaces: tuple = ("127.0.0.1",)
    addresses: tuple = ("127.255.255.255",)
    server_port: int = 5064
    repeater_port: int = 5065
    republish_s: float = 5.0
    insecure: bool = False


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    server: ServerSpec
    paths: PathsSpec
    programs: tuple          # ChildSpecs in start order
    hosts: MappingProxyType
    logs: LogRotation
    warnings: tuple = ()
    history: HistorySpec = HistorySpec()
    alarms: tuple = ()       # AlarmSpecs
    notify: object = None    # NotifySpec, or None
    catalog: CatalogSpec = CatalogSpec()
    epics: object = None     # EpicsSpec, or None

    def program(self, name):
        return next((p for p in self.programs if p.name == name), None)


def find(name_or_path, cwd=None):
    """The file an experiment name or path stands for: a path, NAME.json here, or in experiments/."""
    cwd = Path(cwd or os.getcwd())
    direct = cwd / name_or_path
    if direct.is_file():
        return direct.resolve()
    stem = name_or_path if name_or_path.endswith(".json") else f"{name_or_path}.json"
    for folder in (cwd, cwd / "experiments", PROJECT_ROOT, PROJECT_ROOT / "experiments"):
        candidate = folder / stem
        if candidate.is_file():
            return candidate.resolve()
    raise NotFound(f"experiment {name_or_path!r} not found: no such file, and no {stem} "
                      f"in {cwd}, {cwd / 'experiments'} or {PROJECT_ROOT / 'experiments'}")


def load(name_or_path, cwd=None):
    """Load, validate and freeze an experiment; ConfigError lists every problem at once."""
    path = find(str(name_or_path), cwd)
    return from_dict(read(path), path)


@dataclass(frozen=True)
class BusSettings:
    """What a client needs to join an experiment's bus: its name, its beacon, its CURVE keys."""
    name: str
    beacon: BeaconSpec
    curve: object = None


def bus_settings(name_or_path, cwd=None):
    """The bus settings of an experiment, read without validating its programs (clients need no more).

    ConfigError when the file cannot be read or its `server` section is invalid.
    """
    path = find(str(name_or_path), cwd)
    raw = read(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment description is a JSON object, not {type(raw).__name__}",
                          ["(top level): not an object"])
    if libabcd.is_libabcd(raw):
        raw = libabcd.convert(raw)
    server = raw.get("server", {})
    server_schema = schema()["properties"]["server"]
    validator = jsonschema.Draft202012Validator(server_schema)
    problems = [".".join(["server", *map(str, e.absolute_path)]) + f": {explain(e)}"
                for e in validator.iter_errors(server)]
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s) in its server settings: {'; '.join(problems)}",
                          problems)
    server = fill_defaults(copy.deepcopy(server), server_schema)
    beacon = server["beacon"]
    name = raw.get("name") if isinstance(raw.get("name"), str) else path.stem
    return BusSettings(name, BeaconSpec(beacon["address"], beacon["port"], float(beacon["interval"])),
                       curve_spec(server.get("curve"), path.resolve().parent))


def read(path):
    """The decoded JSON of an experiment file; ConfigError saying where it is broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          [f"line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None


def from_dict(raw, path):
    """Validate a decoded description; `path` is where it came from (relative paths resolve there)."""
    path = Path(path)
    if libabcd.is_libabcd(raw):
        raw = libabcd.convert(raw)
    problems = validate(raw)
    if not problems and isinstance(raw.get("notify"), dict):
        problems = checks.notify_problems(raw["notify"], path.resolve().parent)
    filled = fill_defaults(copy.deepcopy(raw), schema()) if not problems else None
    if not problems:
        problems = checks.catalog_problems(filled["catalog"])
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n{listing}", problems)
    return freeze(filled, path)


def schema():
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(raw):
    """Every problem of a decoded description, as 'json.path: sentence'."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    problems = [f"{json_path(e.absolute_path)}: {explain(e)}" for e in errors]
    if not isinstance(raw, dict):
        return problems
    return problems + checks.cross_check(raw) + checks.network_exposure(raw) + checks.host_credentials(raw) \
        + checks.legacy_exposure(raw) + checks.alarm_definitions(raw) + checks.liveness_probes(raw) \
        + checks.epics_section(raw)


def json_path(parts):
    return ".".join(str(p) for p in parts) or "(top level)"


def explain(error):
    """A sentence a person understands for one schema error."""
    value = json.dumps(error.instance) if not isinstance(error.instance, (dict, list)) else None
    kind = error.validator
    if kind == "enum":
        return f"{value} is not one of {', '.join(map(str, error.validator_value))}"
    if kind == "type":
        return f"{value or 'this'} is not of type {error.validator_value}"
    if kind == "required":
        return error.message.replace("is a required property", "is required")
    if kind == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown key(s)")
    if kind == "pattern":
        return f"{value} does not match {error.validator_value}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "at least", "exclusiveMinimum": "more than",
                 "maximum": "at most", "exclusiveMaximum": "less than"}
        return f"{value} must be {words[kind]} {error.validator_value}"
    if kind == "oneOf" and list(error.path)[-1:] == ["cmd"]:
        return "must be a list of strings or a command string"
    if kind == "oneOf" and "actions" in list(error.path):
        return f"{value or 'this'} is not an action: log, publish, end_run or {{\"send\": {{\"to\": CLIENT, \"cmd\": COMMAND}}}}"
    if kind == "propertyNames":
        return f"{value} is not a valid name"
    return error.message


def fill_defaults(value, node):
    """Fill `default`s of the schema's object properties into `value`, recursively."""
    if not isinstance(value, dict):
        return value
    properties = node.get("properties", {})
    for key, sub in properties.items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            fill_defaults(value[key], sub)
    each = node.get("additionalProperties")
    if isinstance(each, dict):
        for key in value.keys() - properties.keys():
            fill_defaults(value[key], each)
    return value


def freeze(raw, path):
    server, beacon, paths = raw["server"], raw["server"]["beacon"], raw["paths"]
    folder = path.resolve().parent
    order = checks.start_order(raw["programs"])
    start_timeout_s = float(server["timeout"]) + START_ALLOWANCE_S
    programs = tuple(child_spec(name, raw["programs"][name], folder, start_timeout_s) for name in order)
    return Experiment(
        name=raw.get("name", path.stem),
        path=path.resolve(),
        server=ServerSpec(
            router=server["router"], events=server["events"],
            beacon=BeaconSpec(beacon["address"], beacon["port"], float(beacon["interval"])),
            heartbeat_s=float(server["heartbeat"]), timeout_s=float(server["timeout"]),
            stale_after_s=float(server["stale_after"]),
            max_message_bytes=server["max_message_bytes"], insecure=server["insecure"],
            client_rate=float(server["client_rate"]), max_clients=server["max_clients"],
            max_pending=server["max_pending"], legacy=legacy_spec(server.get("legacy")),
            curve=curve_spec(server.get("curve"), folder), replay=replay_spec(server["replay"])),
        paths=PathsSpec(*(folder / paths[key] for key in ("logs", "data", "state"))),
        programs=programs,
        hosts=MappingProxyType({name: host_spec(name, host, folder) for name, host in raw["hosts"].items()}),
        logs=LogRotation(raw["logs"]["max_bytes"], raw["logs"]["keep"]),
        history=HistorySpec(float(raw["history"]["retention_days"])),
        alarms=tuple(alarm_spec(name, alarm) for name, alarm in raw["alarms"].items())
        + ((delivery_alarm(raw["notify"]),) if "notify" in raw else ()),
        notify=notify_spec(raw["notify"], folder) if "notify" in raw else None,
        catalog=catalog_spec(raw["catalog"]),
        epics=epics_spec(raw["epics"]) if "epics" in raw else None,
        warnings=tuple(checks.missing_commands(programs) + checks.renamed_keys(raw)),
    )


def catalog_spec(catalog):
    values = tuple(CatalogValue(v.rpartition(".")[2], v) if isinstance(v, str)
                   else CatalogValue(v.get("name") or v["value"].rpartition(".")[2], v["value"], v.get("units"))
                   for v in catalog["values"])
    rules = tuple(CatalogRule(r["flag"], tuple(r["when"]), r.get("why")) for r in catalog["rules"])
    return CatalogSpec(values, rules, catalog["historian"])


def epics_spec(epics):
    imports = tuple(EpicsImport(pv, entry["as"], entry.get("units")) for pv, entry in epics["import"].items())
    return EpicsSpec(epics["prefix"], tuple(epics["export"]), imports, tuple(epics["writable"]), epics["client"],
                     tuple(epics["interfaces"]), tuple(epics["addresses"]), epics["server_port"],
                     epics["repeater_port"], float(epics["republish"]), epics["insecure"])


def notify_spec(notify, folder):
    rules = tuple(NotifyRule(r["route"], r.get("severity"), tuple(r.get("alarms", ())), r.get("escalate_after"),
                             r.get("escalate_to"), r.get("repeat"), r.get("clear", True)) for r in notify["rules"])
    heartbeat, retry = notify.get("heartbeat") or {}, notify["retry"]
    return NotifySpec(MappingProxyType({k: tuple(v) for k, v in notify["routes"].items()}), rules,
                      folder / notify["secrets"] if notify.get("secrets") else None, notify["link"], notify["client"],
                      float(retry["first"]), float(retry["max"]), int(retry["alarm_after"]),
                      heartbeat.get("url"), float(heartbeat.get("every", 60)), bool(heartbeat.get("quiet_only", True)))


def delivery_alarm(notify):
    """The alarm of notifications that cannot be delivered: the notifier publishes how many are failing."""
    return AlarmSpec(DELIVERY_ALARM, f"{notify['client']}.delivery.failing", "above", 0.0, None, 0.0, "alarm",
                     "notifications cannot be delivered (send.py run notifications: what failed, and why)",
                     ("log", "publish"))


def alarm_spec(name, alarm):
    kind = next(c for c in checks.CONDITIONS if c in alarm)
    limit = tuple(alarm[kind]) if kind == "band" else float(alarm[kind])
    return AlarmSpec(name, alarm["value"], kind, limit, alarm.get("relative_to"), float(alarm["for"]),
                     alarm["severity"], alarm.get("message") or describe_condition(alarm["value"], kind, limit,
                                                                                     alarm.get("relative_to")),
                     tuple(MappingProxyType(a) if isinstance(a, dict) else a for a in alarm["actions"]),
                     alarm["resume"])


def describe_condition(value, kind, limit, relative_to=None):
    """The words an operator reads for a condition without a message of its own."""
    plus = f" {relative_to} +" if relative_to else ""
    if kind == "band":
        return f"{value} outside{plus} [{limit[0]:g}, {limit[1]:g}]"
    if kind in ("above", "below"):
        return f"{value} {kind}{plus} {limit:g}"
    return f"{value} {'has not changed' if kind == 'unchanged' else 'not published'} for {limit:g} s"


def legacy_spec(legacy):
    if legacy is None:
        return None
    return LegacySpec(legacy["address"], legacy["port"], float(legacy["timeout"]), legacy["insecure"])


def replay_spec(replay):
    return ReplaySpec(float(replay["seconds"]), replay["topic_bytes"], replay["max_bytes"])


def host_spec(name, host, folder):
    password_file = host.get("password_file")
    return HostSpec(name, host["supervisord"], host.get("username"),
                    (folder / password_file).resolve() if password_file else None)


def curve_spec(curve, folder):
    if curve is None:
        return None
    return CurveSpec(folder / curve["server_key"], folder / curve["clients"],
                     MappingProxyType({k: tuple(v) for k, v in curve.get("names", {}).items()}))


def child_spec(name, program, folder, start_timeout_s):
    argv = our_python(program["cmd"] if isinstance(program["cmd"], list) else shlex.split(program["cmd"]))
    backoff = program["backoff"]
    return ChildSpec(
        name=name, argv=tuple(argv), restart=program["restart"], depends_on=tuple(program["depends_on"]),
        client=program["client"], participant=program["participant"] or program.get("run", False),
        backoff=BackoffSpec(float(backoff["initial"]), float(backoff["max"]), float(backoff["factor"])),
        max_restarts=program["max_restarts"], restart_window_s=float(program["restart_window"]),
        restart_dependents=program["restart_dependents"], start_timeout_s=float(program.get("start_timeout", start_timeout_s)),
        stop_signal=signal.Signals[f"SIG{program['stop_signal']}"],
        stop_timeout_s=float(program["stop_timeout"]), env=MappingProxyType(dict(program["env"])),
        cwd=(folder / program["cwd"]).resolve(), host=program["host"],
        config=MappingProxyType(copy.deepcopy(program["config"])), liveness=liveness_spec(program.get("liveness")),
        participation=Participation(program["transitions"]["order"], float(program["transitions"]["defer_limit"]),
                                    program["transitions"]["past_limit"]))


def our_python(argv):
    """`python` as a command means the interpreter that runs Orbit, so programs get its environment."""
    return [sys.executable, *argv[1:]] if argv[0] == "python" else list(argv)


def liveness_spec(probe):
    if probe is None:
        return None
    kind = next(k for k in checks.PROBES if k in probe)
    target = tuple(our_python(probe[kind])) if kind == "exec" else probe[kind]
    encoded = {key: probe[key].encode() for key in ("send", "expect") if key in probe}
    return LivenessSpec(kind, target, float(probe["period"]), float(probe["timeout"]), probe["failures"],
                        float(probe["initial_delay"]), **encoded)
