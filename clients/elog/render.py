"""A run's record of the run catalog as a readable Markdown entry of the logbook: pure.

The record's form is the run catalog's (README, "Logbook"; `send.py run record
number=12`): number, times, who began and ended the run and why, comment and
params, the flag, what changed in the settings since the previous run, the
numbers the experiment lists (begin, end, min, mean, max), the alarms and the
operators' actions during the run, the files written and the readers'
counters, and what the record still waits for. Whatever part is missing or
malformed is left out or shown as it came: rendering never fails. Long lists
are cut, saying how many were left out. Times are in UTC. Must not read a
clock, a file or the bus.
"""

import json
import time

ROWS_MAX = 100     # rows of a table (files, settings, alarms, actions) shown at most
CELL_MAX = 120     # characters of a cell


def render(record):
    """The Markdown text of run `record`'s entry."""
    record = record if isinstance(record, dict) else {}
    parts = [title(record), summary(record)]
    for part in (changed_settings(record), values(record), alarms(record), actions(record), files(record),
                 readers(record), settings(record), pending(record)):
        if part:
            parts.append(part)
    return "\n\n".join(parts) + "\n"


def title(record):
    comment = record.get("comment")
    return f"# Run {record.get('run', '?')}" + (f": {cell(comment)}" if comment else "")


def summary(record):
    result, why = record.get("result") or "unknown", record.get("why")
    lines = [f"**{result}**" + (f": {cell(why, 400)}" if why else "")]
    start, end = record.get("start"), record.get("end")
    span = f"{stamp(start)}{f' to {stamp(end, same_day_as=start)}' if number(end) else ''} UTC" if number(start) \
        else "unknown"
    lines.append(f"- time: {span}" + (f" ({duration(record['duration'])})" if number(record.get("duration")) else ""))
    lines.append(f"- began by: {who(record.get('began_by'))}")
    if result != "running":
        lines.append(f"- ended by: {who(record.get('ended_by'))}")
    lines.append(f"- flag: {flag(record.get('flag'))}")
    params = record.get("params")
    if isinstance(params, dict) and params:
        lines.append("- params: " + ", ".join(f"{k}={short(v)}" for k, v in params.items()))
    participants = record.get("participants")
    if isinstance(participants, list) and participants:
        lines.append("- participants: " + ", ".join(map(str, participants)))
    problems = record.get("problems")
    if isinstance(problems, dict) and problems:
        lines.append("- problems: " + "; ".join(f"{k}: {cell(v)}" for k, v in problems.items()))
    return "\n".join(lines)


def who(by):
    """Who began or ended a run: the operator, else the alarm, the signal or the client; and the sequence."""
    if not isinstance(by, dict):
        return cell(by) if by else "unknown"
    if by.get("alarm"):
        text = f"the alarm {by['alarm']}"
    elif by.get("signal"):
        text = f"a shutdown ({by['signal']})"
    else:
        text = str(by.get("operator") or by.get("client") or "unknown")
        if by.get("operator") and by.get("client") and by["client"] != by["operator"]:
            text += f" ({by['client']})"
    sequence = by.get("sequence")
    if isinstance(sequence, dict):
        text += f", sequence {sequence.get('sequence', '?')} step {sequence.get('step', '?')}"
        loop = sequence.get("loop")
        if loop not in (None, {}, 0):
            text += f" loop {short(loop)}"
    return text


def flag(given):
    if not isinstance(given, dict):
        return "unknown"
    text = f"**{given.get('value') or 'unknown'}**"
    details = [str(given["by"])] if given.get("by") else []
    if number(given.get("at")):
        details.append(stamp(given["at"]) + " UTC")
    if given.get("why"):
        details.append(cell(given["why"]))
    return text + (f" ({', '.join(details)})" if details else "")


def changed_settings(record):
    changed = record.get("settings_changed")
    if not isinstance(changed, dict) or not changed:
        return ""
    rows = [(program, key, short(pair[0]), short(pair[1])) for program, keys in changed.items()
            if isinstance(keys, dict) for key, pair in keys.items() if isinstance(pair, list) and len(pair) == 2]
    return section("Settings changed since the previous run", ("program", "setting", "before", "now"), rows)


def values(record):
    given = record.get("values")
    if not isinstance(given, dict) or not given:
        return ""
    rows = []
    for name, stats in given.items():
        stats = stats if isinstance(stats, dict) else {}
        rows.append((name, stats.get("id") or "", stats.get("units") or "",
                     *(short(stats.get(k)) if stats.get(k) is not None else "" for k in ("begin", "end", "min",
                                                                                          "mean", "max")),
                     short(stats.get("count", 0))))
    return section("Values", ("name", "published as", "units", "begin", "end", "min", "mean", "max", "count"), rows)


def alarms(record):
    given = [a for a in record.get("alarms") or [] if isinstance(a, dict)] if isinstance(record.get("alarms"), list) \
        else []
    if not given:
        return ""
    rows = [(a.get("name") or "?", a.get("severity") or "", stamp(a["raised"]) if number(a.get("raised")) else "",
             stamp(a["cleared"]) if number(a.get("cleared")) else "still raised at the end", a.get("message") or "")
            for a in given]
    return section("Alarms", ("alarm", "severity", "raised", "cleared", "message"), rows)


def actions(record):
    given = [a for a in record.get("actions") or [] if isinstance(a, dict)] if isinstance(record.get("actions"), list) \
        else []
    if not given:
        return ""
    rows = [(stamp(a["ts"]) if number(a.get("ts")) else "", a.get("by") or "", a.get("what") or "",
             a.get("detail") or "") for a in given]
    return section("Operator actions", ("time", "by", "what", "detail"), rows)


def files(record):
    given = [f for f in record.get("files") or [] if isinstance(f, dict)] if isinstance(record.get("files"), list) \
        else []
    if not given:
        return ""
    total = sum(f["size"] for f in given if number(f.get("size")))
    rows = [(f.get("program") or "", f"`{f.get('path')}`", size(f.get("size")), short(f.get("images", "")),
             f"`{f.get('sha256')}`" if f.get("sha256") else "") for f in given]
    return section(f"Files ({len(given)}, {size(total)})", ("program", "path", "size", "images", "sha256"), rows)


def readers(record):
    given = record.get("readers")
    if not isinstance(given, dict) or not given:
        return ""
    counters = list(dict.fromkeys(k for c in given.values() if isinstance(c, dict) for k in c))
    rows = [(name, *(short(c.get(k, "")) for k in counters)) for name, c in given.items() if isinstance(c, dict)]
    return section("Readers", ("reader", *counters), rows)


def settings(record):
    given = record.get("settings")
    if not isinstance(given, dict) or not given:
        return ""
    rows = [(program, ", ".join(f"{k}={short(v)}" for k, v in kept.items()) if isinstance(kept, dict)
             else short(kept)) for program, kept in given.items()]
    return section("Settings as the run began", ("program", "settings"), rows)


def pending(record):
    waiting = record.get("pending")
    if not isinstance(waiting, list) or not waiting:
        return ""
    return f"*Not complete yet: {', '.join(map(str, waiting))} (the entry gets a new version when it is).*"


# --- pieces -------------------------------------------------------------------------------------------

def section(heading, header, rows):
    lines = [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows[:ROWS_MAX]]
    if len(rows) > ROWS_MAX:
        lines.append(f"\n... and {len(rows) - ROWS_MAX} more (the whole record: `send.py run record number=N`)")
    return "\n".join(lines)


def cell(value, width=CELL_MAX):
    """Text for a table cell or a line: one line, pipes escaped, cut at `width` characters."""
    text = value if isinstance(value, str) else short(value, width)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def short(value, width=CELL_MAX):
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def stamp(ts, same_day_as=None):
    """`2026-12-05 10:00:00` (UTC); only the time when `same_day_as` is on the same day."""
    shown = "%H:%M:%S" if number(same_day_as) and time.gmtime(ts)[:3] == time.gmtime(same_day_as)[:3] \
        else "%Y-%m-%d %H:%M:%S"
    return time.strftime(shown, time.gmtime(ts))


def duration(seconds):
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return " ".join(f"{n} {unit}" for n, unit in ((hours, "h"), (minutes, "min"), (seconds, "s")) if n) or "0 s"


def size(value):
    if not number(value):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
