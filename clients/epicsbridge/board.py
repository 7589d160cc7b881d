"""What the epics program serves, decided without I/O: each process variable's value, units, time and alarm.

Owns the rules of the bridge's server side: which published numbers are served (`export`: names, or prefixes
ending in `*`) and under which process variable name (the prefix, then the name with dots as colons); their
units (a `unit` or `units` string in the object that holds the number, or the nearest one around it); their
time (the bus's `ts` of the publication); their alarm severity and status (from the run controller's alarms on
them: MAJOR for severity `alarm`, MINOR for `warning`, the status from the kind of condition; INVALID/COMM once
their publisher's client has left or been lost, until it publishes them again); the run state and number; the
writable settings (`<program>.config.<setting>`, typed from the program's settings schema) and how a put's value
becomes a setting. Every change is kept in order (`take_changes`), so monitors hear of each one, not only of
the last of a burst; the driver (`caserver.py`) serves them. Must not touch a socket or Channel Access, nor read
a clock: times come in.
"""

import re
from dataclasses import dataclass

from experiments.checks import matches_any

RUN_STATE, RUN_NUMBER = "run.state", "run.number"
RUN_STATES = ("STOP", "READY", "RUN", "PAUSED")
SEVERITIES = {"warning": "MINOR", "alarm": "MAJOR"}    # an Orbit alarm's severity as EPICS says it
RANK = {"NO_ALARM": 0, "MINOR": 1, "MAJOR": 2, "INVALID": 3}
UNITS_MAX = 8          # bytes: the units field of Channel Access
STRING_MAX = 39        # characters of a DBR_STRING
LIST_MAX = 64          # list items named, as protocol.published_numbers names them
BOOLEAN = ("false", "true")
PV_NAME = re.compile(r"[A-Za-z0-9_:+\-\[\]<>;]+")
PUT_BY = "epics ({user}@{host})"
BY_MAX = 64


@dataclass
class Served:
    """One process variable as the board wants it served."""
    name: str                  # the Orbit name: cryo.values.temperature, run.state, bias.config.volts
    pv: str                    # DAMICM:cryo:values:temperature
    kind: str                  # double, integer, enum or string
    value: object
    ts: float
    units: str = ""
    severity: str = "NO_ALARM"     # NO_ALARM, MINOR, MAJOR, INVALID
    status: str = "NO_ALARM"       # an EPICS alarm status: HIHI, HIGH, LOLO, LOW, STATE, COMM, ...
    choices: tuple = ()            # an enum's strings
    limits: object = None          # (low, high) of a setting, from its schema
    writable: bool = False
    publisher: object = None       # the client whose publication it is
    stale: bool = False            # its publisher has gone


@dataclass(frozen=True)
class Watch:
    """An alarm of the experiment as it bears on the number it watches (from an experiments.AlarmSpec)."""
    alarm: str
    value: str
    kind: str
    limit: object
    relative_to: object = None


def watches(alarm_specs):
    return [Watch(a.name, a.value, a.kind, a.limit, a.relative_to) for a in alarm_specs]


def pv_name(prefix, name):
    return prefix + name.replace(".", ":")


def numbers_with_units(prefix, value, units="", out=None):
    """Every number inside published `value` as (name, float, units), named as protocol.published_numbers names
    them (`<from>.<topic>.<key>...`; bools are not numbers); `units` the nearest `unit` or `units` string around."""
    out = [] if out is None else out
    if isinstance(value, bool):
        return out
    if isinstance(value, (int, float)):
        if value == value and abs(value) != float("inf"):
            out.append((prefix, float(value), units))
    elif isinstance(value, dict):
        given = value.get("unit", value.get("units"))
        units = given if isinstance(given, str) else units
        for key, inner in value.items():
            numbers_with_units(f"{prefix}.{key}", inner, units, out)
    elif isinstance(value, list):
        for index, inner in enumerate(value[:LIST_MAX]):
            numbers_with_units(f"{prefix}.{index}", inner, units, out)
    return out


def status_of(watch, severity, value):
    """The EPICS alarm status of a number an active alarm watches: which limit it is past, or its state."""
    high, low = ("HIHI", "LOLO") if severity == "alarm" else ("HIGH", "LOW")
    if watch.kind == "above":
        return high
    if watch.kind == "below":
        return low
    if watch.kind == "band" and watch.relative_to is None and isinstance(value, (int, float)):
        return high if value > watch.limit[1] else low
    return "COMM" if watch.kind == "missing" else "STATE"


def setting_kind(prop):
    """(kind, choices) of a process variable for a setting's schema, or None when it cannot be one."""
    if not isinstance(prop, dict):
        return None
    choices = prop.get("enum")
    if isinstance(choices, list) and choices and all(isinstance(c, str) and len(c) <= 25 for c in choices):
        return "enum", tuple(choices)
    kind = prop.get("type")
    if kind == "boolean":
        return "enum", BOOLEAN
    return {"integer": ("integer", ()), "number": ("double", ()), "string": ("string", ())}.get(kind)


def put_by(user, host):
    """Who a put acts for, in the run controller's logs: `epics (user@host)` as Channel Access names them."""
    return PUT_BY.format(user=user or "?", host=host or "?")[:BY_MAX]


def split_setting(name):
    program, _, setting = name.partition(".config.")
    return program, setting


class Board:
    """Every process variable to serve, and what changed since the driver last took it."""

    def __init__(self, prefix, export, writable, alarm_watches):
        self.prefix, self.export = prefix, tuple(export)
        self.writable = {name: split_setting(name) for name in writable}
        self.watching = {}        # Orbit name -> the Watches on it
        for watch in alarm_watches:
            self.watching.setdefault(watch.value, []).append(watch)
            self.watching.setdefault(f"run.alarm.{watch.alarm}.active", []).append(watch)
        self.served = {}          # Orbit name -> Served
        self.changes = []         # (a copy of a Served as it changed, news), in order
        self.active = {}          # alarm name -> its record, while its condition holds
        self.unservable = []      # names that cannot be process variables, for the driver to log once each
        self.units = {}           # Orbit name -> units known otherwise (an imported channel's), when none is published
        self._refused = set()
        self._exported = {}       # Orbit name -> whether it is exported (the patterns matched once per name)

    # --- what comes in ----------------------------------------------------------------------------------

    def take_publication(self, sender, topic, data, ts):
        """A publication on the bus: each exported number in it is served with its units and the bus's time."""
        for name, value, units in numbers_with_units(f"{sender}.{topic}", data):
            exported = self._exported.get(name)
            if exported is None:
                exported = self._exported[name] = name not in self.writable and matches_any(self.export, name)
            if exported:
                units = units or self.units.get(name, "")
                self._put(name, "double", value, ts, units=units[:UNITS_MAX], publisher=sender)

    def publisher_gone(self, client):
        """`client` left or was lost: what it published is INVALID until it publishes it again."""
        for served in self.served.values():
            if served.publisher == client and not served.stale:
                served.stale = True
                self._judge(served, force=True)

    def take_run(self, state, run, ts):
        """The run state and number (a run_state event, or the run controller's status); only a change counts."""
        if state in RUN_STATES and matches_any(self.export, RUN_STATE):
            self._put(RUN_STATE, "enum", state, ts, choices=RUN_STATES, unless_same=True)
        if isinstance(run, int) and not isinstance(run, bool) and matches_any(self.export, RUN_NUMBER):
            self._put(RUN_NUMBER, "integer", run, ts, unless_same=True)

    def take_alarms(self, records):
        """The standing alarms (the run controller's `alarms` or `status`): those active count, no others."""
        active = {r["alarm"]: r for r in records if isinstance(r, dict) and r.get("state") == "active"
                  and isinstance(r.get("alarm"), str)}
        changed = {name for name in active.keys() | self.active.keys()
                   if (active.get(name) or {}).get("severity") != (self.active.get(name) or {}).get("severity")}
        self.active = active
        self._rejudge(changed)

    def take_alarm(self, record):
        """One alarm event (alarm_raised, alarm_cleared, alarm_acked)."""
        name = record.get("alarm")
        if not isinstance(name, str):
            return
        if record.get("state") == "active":
            self.active[name] = record
        else:
            self.active.pop(name, None)
        self._rejudge({name})

    def take_settings(self, program, info, ts):
        """A program's settings as the run controller's `config` gives them ({"values", "schema", ...})."""
        values = info.get("values") if isinstance(info, dict) else None
        schema = info.get("schema") if isinstance(info, dict) else None
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(values, dict) or not isinstance(properties, dict):
            return
        for name, (owner, setting) in self.writable.items():
            if owner != program or setting not in values:
                continue
            typed = setting_kind(properties.get(setting))
            if typed is None:
                self._refuse(name)
                continue
            prop = properties[setting]
            low, high = prop.get("minimum"), prop.get("maximum")
            limits = (low, high) if all(isinstance(x, (int, float)) for x in (low, high)) else None
            units = prop.get("units") if isinstance(prop.get("units"), str) else ""
            self._put(name, typed[0], served_value(typed, values[setting]), ts, choices=typed[1], limits=limits,
                      units=units[:UNITS_MAX], writable=True, unless_same=True)

    def take_config_changed(self, program, changes, ts):
        """A config_changed event: {setting: [old, new]}."""
        for setting, change in (changes.items() if isinstance(changes, dict) else ()):
            name = f"{program}.config.{setting}"
            served = self.served.get(name)
            if served is not None and served.writable and isinstance(change, list) and len(change) == 2:
                typed = (served.kind, served.choices)
                self._put(name, served.kind, served_value(typed, change[1]), ts, choices=served.choices,
                          limits=served.limits, units=served.units, writable=True)

    def take_changes(self):
        """Every change since the last call, in order: (a copy of the Served as it changed, news), `news` telling
        whether monitors hear of it (else only its time moved)."""
        changes, self.changes = self.changes, []
        return changes

    # --- inside -------------------------------------------------------------------------------------------

    def _put(self, name, kind, value, ts, unless_same=False, **fields):
        served = self.served.get(name)
        if served is None or served.kind != kind or served.choices != fields.get("choices", ()):
            pv = pv_name(self.prefix, name)
            if not PV_NAME.fullmatch(pv):
                self._refuse(name)
                return
            served = self.served[name] = Served(name, pv, kind, value, ts, **fields)
            self._judge(served, force=True)
            return
        same = served.value == value and all(getattr(served, k) == v for k, v in fields.items()) and not served.stale
        if same and unless_same:
            return
        served.value, served.ts, served.stale = value, ts, False
        for key, field_value in fields.items():
            setattr(served, key, field_value)
        self._judge(served, force=not same)

    def _rejudge(self, alarms):
        names = {w.value for ws in self.watching.values() for w in ws if w.alarm in alarms}
        names |= {f"run.alarm.{alarm}.active" for alarm in alarms}
        for name in names:
            if name in self.served:
                self._judge(self.served[name], moved=False)

    def _judge(self, served, force=False, moved=True):
        """Its severity and status anew, and the change kept if there is one (news when they changed, or `force`;
        else, if `moved`, its time moved)."""
        severity, status = self._alarm_of(served)
        news = force or (severity, status) != (served.severity, served.status)
        served.severity, served.status = severity, status
        if news or moved:
            copy = object.__new__(Served)   # a plain copy: dataclasses.replace was 7 % of the program's time
            copy.__dict__.update(served.__dict__)
            self.changes.append((copy, news))

    def _alarm_of(self, served):
        if served.stale:
            return "INVALID", "COMM"
        worst = ("NO_ALARM", "NO_ALARM")
        for watch in self.watching.get(served.name, ()):
            record = self.active.get(watch.alarm)
            severity = SEVERITIES.get(record.get("severity")) if record else None
            if severity is None or RANK[severity] <= RANK[worst[0]]:
                continue
            status = status_of(watch, record["severity"], served.value) if served.name == watch.value else "STATE"
            worst = (severity, status)
        return worst

    def _refuse(self, name):
        if name not in self._refused:
            self._refused.add(name)
            self.unservable.append(name)


def served_value(typed, value):
    """A setting's value as its process variable holds it (an enum's string; a boolean's "true"/"false")."""
    kind, choices = typed
    if choices == BOOLEAN:
        return BOOLEAN[bool(value)]
    if kind == "string":
        return str(value)[:STRING_MAX]
    return value


def setting_value(served, value):
    """What a put's value (as Channel Access gives it for the process variable) is as a setting."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if served.kind == "enum" and not isinstance(value, str):   # an index: caproto turns a put's string into one
        index = int(value)
        if not 0 <= index < len(served.choices):
            raise ValueError(f"no choice {index}")
        value = served.choices[index]
    if served.choices == BOOLEAN:
        return value == "true"
    if served.kind == "integer":
        return int(value)
    if served.kind == "double":
        return float(value)
    return str(value)
