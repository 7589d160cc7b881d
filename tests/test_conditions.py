"""Alarm conditions and hold times, at given moments: each kind fires after its hold and not before, and clears;
the alarm book keeps standing alarms and their log through a reopening."""

import pytest

import experiments
from runcontrol.control.alarmbook import AlarmBook
from runcontrol.control.conditions import Check, Holds, Values, program_checks, value_check
from runcontrol.errors import ConfigError

T0 = 1_800_000_000.0


def alarm(**definition):
    raw = {"programs": {"feed": {"cmd": "true", "client": "feed"}}, "alarms": {"a": definition}}
    return experiments.from_dict(raw, "/tmp/alarms.json").alarms[0]


def run(spec, publications, moments):
    """Publish (ts, value) of feed.values.x and feed.values.ref; say at each moment whether the alarm is up."""
    values, holds, up, seen = Values(T0), Holds(), set(), []
    events = sorted([(ts, "pub", data) for ts, data in publications] + [(ts, "look", None) for ts in moments],
                    key=lambda e: (e[0], e[1] == "look"))
    for ts, what, data in events:
        if what == "pub":
            values.take("feed.values", data, ts)
            continue
        raised, cleared = holds.update([value_check(spec, values, ts)], up, ts)
        up |= {c.alarm for c in raised}
        up -= set(cleared)
        seen.append((round(ts - T0, 3), bool(up)))
    return seen


@pytest.mark.parametrize("definition, bad, good", [
    ({"above": 10}, 11, 9),
    ({"below": -5}, -6, 0),
    ({"band": [0, 10]}, 12, 5),
    ({"band": [0, 10]}, -1, 5),
])
def test_a_limit_fires_after_its_hold_and_not_before_and_clears(definition, bad, good):
    spec = alarm(value="feed.values.x", **definition, **{"for": 3})
    seen = run(spec, [(T0, {"x": good}), (T0 + 1, {"x": bad}), (T0 + 2, {"x": bad}), (T0 + 5, {"x": good})],
               [T0 + t for t in (0.5, 1.0, 2.0, 3.9, 4.0, 4.5, 5.0, 6.0)])
    assert seen == [(0.5, False), (1.0, False), (2.0, False), (3.9, False), (4.0, True), (4.5, True),
                    (5.0, False), (6.0, False)]


def test_a_break_in_the_condition_starts_the_hold_again():
    spec = alarm(value="feed.values.x", above=10, **{"for": 3})
    seen = run(spec, [(T0, {"x": 11}), (T0 + 2, {"x": 9}), (T0 + 2.5, {"x": 11})],
               [T0 + t for t in (1, 2.2, 2.5, 3.1, 5.4, 5.5)])
    assert seen == [(1, False), (2.2, False), (2.5, False), (3.1, False), (5.4, False), (5.5, True)]


def test_a_limit_counted_from_another_value():
    spec = alarm(value="feed.values.x", above=5, relative_to="feed.values.ref", **{"for": 0})
    seen = run(spec, [(T0, {"x": 145}), (T0 + 1, {"ref": 140}), (T0 + 2, {"x": 146}), (T0 + 3, {"ref": 145})],
               [T0 + t for t in (0.5, 1.5, 2.5, 3.5)])
    assert seen == [(0.5, False), (1.5, False), (2.5, True), (3.5, False)]  # no limit before ref is known


def test_unchanged_fires_when_the_value_stays_the_same_though_published():
    spec = alarm(value="feed.values.x", unchanged=10)
    pubs = [(T0 + t, {"x": 1.0}) for t in range(0, 15)] + [(T0 + 15, {"x": 2.0})]
    seen = run(spec, pubs, [T0 + t for t in (9.5, 10.5, 14.5, 15.5)])
    assert seen == [(9.5, False), (10.5, True), (14.5, True), (15.5, False)]


def test_missing_fires_when_the_value_stops_coming_and_counts_from_the_start_when_never_seen():
    spec = alarm(value="feed.values.x", missing=5, **{"for": 1})
    seen = run(spec, [(T0 + 10, {"x": 1}), (T0 + 12, {"x": 1})],
               [T0 + t for t in (4, 5, 5.5, 6, 10.5, 17, 17.5, 18, 20)])
    assert seen == [(4, False), (5, False), (5.5, False), (6, True), (10.5, False), (17, False), (17.5, False),
                    (18, True), (20, True)]


def test_program_checks_name_the_program_the_host_and_the_participant():
    checks = {c.alarm: c for c in program_checks(
        {"lta1": {"state": "FATAL", "last_exit": "exited with status 1"}, "cryo": {"state": "BACKOFF"}},
        {"daq2": {"reachable": False, "problem": "connection refused"}}, "RUN", 7, ["lta1", "lta2"], {"lta1"})}
    assert checks["program.lta1.fatal"].holds and "exited with status 1" in checks["program.lta1.fatal"].message
    assert checks["program.cryo.down"].holds and checks["program.cryo.down"].hold_s == 30
    assert not checks["program.cryo.fatal"].holds
    assert checks["host.daq2.unreachable"].holds and "connection refused" in checks["host.daq2.unreachable"].message
    assert checks["run.lta2.absent"].holds and not checks["run.lta1.absent"].holds
    assert checks["run.lta2.absent"].hold_s == 10
    assert "run 7" in checks["run.lta2.absent"].message


def test_the_book_keeps_alarms_until_cleared_and_acknowledged_through_a_reopening(tmp_path):
    book = AlarmBook(tmp_path)
    book.raise_(Check("hot", True, "alarm", "too hot", value=12.0), T0)
    book.raise_(Check("slow", True, "warning", "slow", value=1.0), T0 + 1)
    book.ack("hot", "alice", T0 + 2)
    book = AlarmBook(tmp_path)   # as after a restart
    assert [r["alarm"] for r in book.listing()] == ["slow", "hot"]   # unacknowledged first
    assert book.alarms["hot"]["acked"] == {"by": "alice", "at": T0 + 2} and book.active() == {"hot", "slow"}
    book.clear("hot", T0 + 3)        # acknowledged and cleared: gone
    book.clear("slow", T0 + 4)       # cleared, not acknowledged: stays, as cleared
    assert [(r["alarm"], r["state"]) for r in book.listing()] == [("slow", "cleared")] and book.active() == set()
    book.ack("slow", "bob", T0 + 5)
    assert book.listing() == []
    with pytest.raises(LookupError, match="no alarm 'nope'"):
        book.ack("nope", "bob", T0 + 6)
    changes = [(e["change"], e["alarm"]) for e in AlarmBook(tmp_path).tail(100)]
    assert changes == [("raised", "hot"), ("raised", "slow"), ("acked", "hot"), ("cleared", "hot"),
                       ("cleared", "slow"), ("acked", "slow")]
    assert [e["change"] for e in book.tail(2)] == ["cleared", "acked"]


@pytest.mark.parametrize("definition, problem", [
    ({"value": "feed.values.x"}, "alarms.a: give exactly one condition"),
    ({"value": "feed.values.x", "above": 1, "missing": 3}, "alarms.a: give exactly one condition"),
    ({"value": "feed.values.x", "band": [5, 1]}, "alarms.a.band: the low limit 5 must be below"),
    ({"value": "feed.values.x", "above": "hot"}, 'alarms.a.above: "hot" is not of type number'),
    ({"value": "feed.values.x", "missing": 5, "relative_to": "feed.values.y"}, "alarms.a.relative_to: only with"),
    ({"value": "feed.values.x", "above": 1, "severity": "panic"}, 'alarms.a.severity: "panic" is not one of'),
    ({"value": "feed.values.x", "above": 1, "for": -1}, "alarms.a.for: -1 must be at least 0"),
    ({"value": "feed.values.x", "above": 1, "actions": ["shout"]}, 'alarms.a.actions.0: "shout" is not an action'),
    ({"value": "feed.values.x", "above": 1, "actions": [{"send": {"to": "nobody", "cmd": "x"}}]},
     "alarms.a.actions.0.send.to: 'nobody' is the client of no program"),
    ({"value": "feed.values.x", "above": 1, "actions": [{"send": {"to": "feed", "cmd": "_bye"}}]},
     'alarms.a.actions.0: this is not an action'),
])
def test_a_malformed_alarm_is_refused_with_its_path(definition, problem):
    raw = {"programs": {"feed": {"cmd": "true", "client": "feed"}}, "alarms": {"a": definition}}
    with pytest.raises(ConfigError) as refused:
        experiments.from_dict(raw, "/tmp/alarms.json")
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
