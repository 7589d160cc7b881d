"""A run's record for the catalog, put together from what the run controller keeps of it.

Owns the shape of the record (docs/protocol.md, "The run catalog"): from the run
log's outcome of the run, every program's settings as it began (and the
previous run's, for what changed), the alarm log and the settings log over the
run (alarms raised, operator actions), the participants' reports (the files a
reader wrote and its counters) and the catalog values' summaries from the
history. Pure: everything comes in, the record goes out; must not read files,
the clock or the bus.
"""

from runcontrol.control.configs import diff

FLAG_VALUES = ("good", "bad", "unknown")
UNFLAGGED = {"value": "unknown", "by": None, "at": None, "why": None}
ENDED_BY = ("client", "operator", "alarm", "sequence", "signal")
BEGAN_BY = ("client", "operator", "sequence")
RESULT_ENDS = {"ended by alarm": "alarm", "ended by shutdown": "signal"}


def build(entry, settings, previous, alarm_log, config_log, recorded):
    """The record of the run whose last line of the run log is `entry`. `settings`: every program's settings as it
    began ({} when none were saved); `previous`: the previous run's (None for the first); `alarm_log` and
    `config_log`: lines of those logs (only those of the run's span are taken); `recorded`: now."""
    start, end = entry.get("start"), entry.get("end")
    reports = entry.get("reports") or {}
    return {
        "run": entry["run"], "start": start, "end": end, "duration": entry.get("duration"),
        "result": entry.get("result"), "why": entry.get("why"),
        "comment": entry.get("comment") or "", "params": entry.get("params") or {},
        "began_by": began_by(entry), "ended_by": ended_by(entry),
        "participants": entry.get("participants") or [], "problems": entry.get("problems") or {},
        "excluded": entry.get("excluded") or {}, "deferred": entry.get("deferred") or {},
        "pauses": entry.get("pauses") or [], "paused_s": entry.get("paused_s") or 0,
        "live_s": entry.get("live_s", entry.get("duration")),
        "settings": settings, "settings_changed": changed(previous, settings),
        "values": {},
        "alarms": alarms_in(alarm_log, start, end),
        "actions": actions_in(config_log, alarm_log, start, end),
        "files": [dict(f, program=name) for name, report in sorted(reports.items())
                  for f in (report.get("files_written") if isinstance(report, dict) else None) or ()
                  if isinstance(f, dict)],
        "readers": {name: {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                           and k != "run"}
                    for name, report in sorted(reports.items()) if isinstance(report, dict)},
        "flag": dict(UNFLAGGED), "pending": [], "recorded": recorded,
        "logged": entry.get("logged"),   # which line of the run log it was made from
    }


def began_by(entry):
    given = entry.get("began_by") or {}
    return {"client": given.get("client"), "operator": given.get("operator") or entry.get("by"),
            "sequence": given.get("sequence") or entry.get("sequence")}


def ended_by(entry):
    given = dict(entry.get("ended_by") or {})
    cause = RESULT_ENDS.get(entry.get("result"))
    if cause == "alarm" and not given.get("alarm"):   # a run log written before ended_by existed
        given["alarm"] = (entry.get("why") or "").removeprefix("alarm ").split(":", 1)[0] or None
    return {key: given.get(key) for key in ENDED_BY}


def changed(previous, settings):
    """program -> key -> [previous run's value, this run's], for what differs; {} for the first run."""
    return {} if previous is None else diff(previous, settings)


def within(ts, start, end):
    return isinstance(ts, (int, float)) and start is not None and start <= ts and (end is None or ts <= end)


def alarms_in(alarm_log, start, end):
    """Alarms raised during the run, each with when it cleared (None: still standing at the end)."""
    raised = []
    for line in alarm_log:
        if not isinstance(line, dict):
            continue
        if line.get("change") == "raised" and within(line.get("ts"), start, end):
            raised.append({"name": line.get("alarm"), "severity": line.get("severity"), "raised": line.get("ts"),
                           "cleared": None, "message": line.get("message")})
        elif line.get("change") == "cleared" and within(line.get("ts"), start, end):
            for alarm in reversed(raised):
                if alarm["name"] == line.get("alarm") and alarm["cleared"] is None:
                    alarm["cleared"] = line.get("ts")
                    break
    return raised


def actions_in(config_log, alarm_log, start, end):
    """What people did during the run: settings changed, alarms acknowledged; oldest first."""
    actions = []
    for line in config_log:
        if isinstance(line, dict) and line.get("changes") and line.get("accepted") \
                and within(line.get("ts"), start, end):
            detail = ", ".join(f"{key} {pair[0]} -> {pair[1]}" if isinstance(pair, list) and len(pair) == 2
                               else f"{key}" for key, pair in sorted(line["changes"].items()))
            actions.append({"ts": line["ts"], "by": line.get("by"), "what": "set_config",
                            "detail": f"{line.get('program')} {detail}"})
    for line in alarm_log:
        if isinstance(line, dict) and line.get("change") == "acked" and within(line.get("ts"), start, end):
            actions.append({"ts": line["ts"], "by": (line.get("acked") or {}).get("by"), "what": "ack",
                            "detail": line.get("alarm")})
    return sorted(actions, key=lambda a: a["ts"])


def with_values(record, summaries, specs):
    """The record with its catalog values from the history's `summaries` ({id: summary}); `specs`: the
    experiment's CatalogValues."""
    values = {}
    for spec in specs:
        summary = summaries.get(spec.value) or {}
        values[spec.name] = {"id": spec.value, "units": spec.units,
                             **{k: summary.get(k) for k in ("begin", "end", "min", "mean", "max")},
                             "count": summary.get("count") or 0}
    return {**record, "values": values}
