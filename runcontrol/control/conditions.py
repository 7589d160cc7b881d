"""What alarms watch: the last published numbers, the conditions on them and on the programs, and hold times.

Owns deciding, at a moment `now` (seconds since the epoch), which conditions
hold (`Check`s) and which alarms that makes raised or cleared (`Holds`): a
condition must hold `hold_s` without a break before its alarm is raised, and an
alarm clears as soon as its condition no longer holds. Pure: takes values,
states and times; must not send, write or read a clock.
"""

from dataclasses import dataclass

from runcontrol import protocol

DOWN_HOLD_S = 30.0      # a program trying to start this long without running is down
ABSENT_HOLD_S = 10.0    # a participant unregistered this long during a run is missing from it
TRYING = ("STARTING", "BACKOFF")


@dataclass(frozen=True)
class Check:
    """One condition evaluated: does it hold now, and what an operator reads when it raises its alarm."""
    alarm: str
    holds: bool
    severity: str
    message: str
    hold_s: float = 0.0
    value: object = None


class Values:
    """The last value of each published number: when it was last published and when it last changed."""

    def __init__(self, started):
        self.started = started   # a number never seen counts as missing since then
        self.seen = {}           # name -> [value, published at, changed at]

    def take(self, key, data, ts):
        """A publication of `key` (`<from>.<topic>`) at `ts`; each number inside it is kept."""
        for name, value in protocol.published_numbers(key, data, []):
            held = self.seen.get(name)
            if held is None:
                self.seen[name] = [value, ts, ts]
            elif ts >= held[1]:
                held[2] = held[2] if value == held[0] else ts
                held[0], held[1] = value, ts

    def value(self, name):
        held = self.seen.get(name)
        return held[0] if held else None


def value_check(spec, values, now):
    """The check of one declared alarm (an `experiments.AlarmSpec`) against the values."""
    held = values.seen.get(spec.value)
    if spec.kind == "missing":
        since = held[1] if held else values.started
        return _check(spec, now - since >= spec.limit, round(now - since, 1))
    if held is None:
        return _check(spec, False)
    value = held[0]
    if spec.kind == "unchanged":
        return _check(spec, now - held[2] >= spec.limit, value)
    base = 0.0
    if spec.relative_to:
        base = values.value(spec.relative_to)
        if base is None:
            return _check(spec, False, value)   # no limit known yet: nothing to say
    if spec.kind == "above":
        return _check(spec, value > base + spec.limit, value)
    if spec.kind == "below":
        return _check(spec, value < base + spec.limit, value)
    low, high = spec.limit
    return _check(spec, not base + low <= value <= base + high, value)


def _check(spec, holds, value=None):
    return Check(spec.name, holds, spec.severity, spec.message, spec.hold_s, value)


def program_checks(programs, hosts, run_state, run, participants, registered):
    """The built-in alarms: a program FATAL, a program that cannot get running, a host unreachable, a
    participant of the run not registered. `programs`: name -> {state, last_exit, ...} as the supervisor says."""
    checks = []
    for name, info in programs.items():
        state = info.get("state")
        why = info.get("last_exit")
        checks.append(Check(f"program.{name}.fatal", state == "FATAL", "alarm",
                            f"{name} is FATAL: no longer restarted" + (f" (last: {why})" if why else "")))
        checks.append(Check(f"program.{name}.down", state in TRYING, "warning",
                            f"{name} has not got running for {DOWN_HOLD_S:g} s ({state})", DOWN_HOLD_S))
    for name, info in hosts.items():
        checks.append(Check(f"host.{name}.unreachable", not info.get("reachable", True), "alarm",
                            f"host {name} cannot be reached: {info.get('problem') or 'no answer'}"))
    for name in participants:
        checks.append(Check(f"run.{name}.absent", run_state in ("RUN", "PAUSED") and name not in registered, "alarm",
                            f"{name} takes part in run {run} but is not registered", ABSENT_HOLD_S))
    return checks


class Holds:
    """Since when each condition has held without a break; which alarms that raises or clears."""

    def __init__(self):
        self.since = {}

    def update(self, checks, active, now):
        """`checks` evaluated at `now`, `active`: the names of alarms up now (condition holding when raised).
        Returns (checks whose alarm is to be raised, names of alarms whose condition cleared)."""
        raise_, clear, seen = [], [], set()
        for check in checks:
            seen.add(check.alarm)
            if not check.holds:
                self.since.pop(check.alarm, None)
                if check.alarm in active:
                    clear.append(check.alarm)
                continue
            since = self.since.setdefault(check.alarm, now)
            if check.alarm not in active and now - since >= check.hold_s:
                raise_.append(check)
        for gone in set(self.since) - seen:   # no longer watched (a program removed by a reload)
            del self.since[gone]
        clear += [name for name in active if name not in seen]
        return raise_, clear
