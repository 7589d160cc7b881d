"""Who is told what about which alarm, and when: the rules applied to the standing alarms.

Takes the alarms that stand (the run controller's `alarms` listing: active, or
cleared and not yet acknowledged), what each occurrence of an alarm has already
caused (`told`: route -> when), the rules of the experiment, what maintenance
silences, and the time; returns the messages due. An alarm is told to the route
of every rule it matches when it is raised; to `escalate_to` once it stood
`escalate_after` seconds unacknowledged; again every `repeat` seconds while it
stands unacknowledged; and a follow-up goes to everyone told when it clears.
Pure: reads no clock, sends and writes nothing.
"""

import time
from dataclasses import dataclass

RAISED, ESCALATED, REPEAT, CLEARED = "raised", "escalated", "repeat", "cleared"


@dataclass(frozen=True)
class Message:
    route: str
    kind: str        # raised, escalated, repeat, cleared
    alarm: dict      # the alarm's record as the run controller lists it


def occurrence(record):
    """One raising of an alarm: its name and when it was raised."""
    return f"{record.get('alarm')}@{record.get('raised')}"


def silenced(record, maintenance, now, watched=None):
    """Whether a maintenance window that is open holds back messages about this alarm; `watched`: alarm name ->
    the published number it watches (`cryo.values.temperature` is an alarm of program cryo)."""
    name = str(record.get("alarm"))
    value = str((watched or {}).get(name, ""))
    for window in maintenance:
        if not window["from"] <= now < window["until"]:
            continue
        alarms, programs = window.get("alarms") or [], window.get("programs") or []
        if not alarms and not programs:
            return True
        if any(name == a or (a.endswith("*") and name.startswith(a[:-1])) for a in alarms):
            return True
        if any(name.startswith(f"program.{p}.") or name.startswith(f"{p}.") or value.startswith(f"{p}.")
               for p in programs):
            return True
    return False


def due(state, standing, rules, maintenance, now, watched=None):
    """The messages due now; `state` (occurrence -> what it caused) is updated as if they were sent. `watched`: as
    for `silenced`."""
    messages = []
    current = {occurrence(r): r for r in standing if isinstance(r, dict) and r.get("alarm")}
    for key, record in current.items():
        if silenced(record, maintenance, now, watched):
            continue
        new = key not in state
        told = state.setdefault(key, {"alarm": record["alarm"], "told": {}, "cleared_told": False})
        told["record"] = record
        matching = [r for r in rules if r.matches(record["alarm"], record.get("severity"))]
        unacked = not record.get("acked")
        for rule in matching:
            if rule.route not in told["told"] and (record.get("state") == "active" or new):   # new: it rose and
                # cleared while nobody looked (the notifier restarting): told once, its clearing in the message
                messages.append(Message(rule.route, RAISED, record))
                told["told"][rule.route] = now
            first = told["told"].get(rule.route)
            if (rule.escalate_to and unacked and first is not None and now - first >= rule.escalate_after_s
                    and rule.escalate_to not in told["told"]):
                messages.append(Message(rule.escalate_to, ESCALATED, record))
                told["told"][rule.escalate_to] = now
            last = told.get("repeated", {}).get(rule.route, first)
            if rule.repeat_s and unacked and record.get("state") == "active" and last is not None \
                    and now - last >= rule.repeat_s:
                messages.append(Message(rule.route, REPEAT, record))
                told.setdefault("repeated", {})[rule.route] = now
        if new and record.get("state") == "cleared":
            told["cleared_told"] = True
        if record.get("state") == "cleared" and not told["cleared_told"]:
            messages += clear_messages(told, record, rules)
    for key in [k for k in state if k not in current]:   # cleared and acknowledged since: gone from the list
        told = state.pop(key)
        if not told["cleared_told"] and told["told"]:
            messages += clear_messages(told, {**told.get("record", {}), "state": "cleared"}, rules)
    return messages


def clear_messages(told, record, rules):
    told["cleared_told"] = True
    clearing = [r for r in rules if r.clear and r.matches(record.get("alarm"), record.get("severity"))]
    wanting = {r.route for r in clearing} | {r.escalate_to for r in clearing if r.escalate_to}
    return [Message(route, CLEARED, record) for route in told["told"] if route in wanting]


def text(message, link, experiment):
    """The title and body of a message: what, where, since when, the value, and the link to acknowledge it."""
    record = message.alarm
    name, severity = record.get("alarm"), str(record.get("severity", "alarm")).upper()
    words = {RAISED: "", ESCALATED: "unacknowledged: ", REPEAT: "still standing: ", CLEARED: "cleared: "}
    title = f"[{experiment}] {words.get(message.kind, message.kind + ': ')}{severity} {name}"
    lines = [f"{record.get('message', '')}", f"alarm: {name} ({severity.lower()}) in experiment {experiment}",
             f"raised: {stamp(record.get('raised'))}"]
    if record.get("value") is not None:
        lines.append(f"value: {record.get('value')}")
    if message.kind == CLEARED or record.get("state") == "cleared":
        lines.append(f"cleared: {stamp(record.get('cleared'))}")
    if record.get("acked"):
        lines.append(f"acknowledged by {record['acked'].get('by')}")
    lines.append(f"acknowledge it (after logging in): {link.rstrip('/')}/#alarms/{name}")
    return title, "\n".join(lines)


def stamp(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, (int, float)) else "unknown"
