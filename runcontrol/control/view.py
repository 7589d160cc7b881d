"""The live view of a running system: what `status.py` and `run.py` show in a terminal.

Renders a snapshot (`Operator.snapshot()`) into a screen that never wraps: the
standing alarms and the notifier's open maintenance windows on top, a header
with the server and the run (a pause: since when, by whom, why; who holds a
transition under way; who is left out of runs), the program table whose
columns drop from the right to fit, monitoring values and notable events (of a
transition's progress, the latest only); the live loop keeps the last snapshot
while the server is away. Must not change anything it shows; the one thing it
writes is an operator's note to the logbook (key `n`).
"""

import contextlib
import getpass
import json
import os
import sys
import termios
import time
import tty

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runcontrol import logsetup, protocol
from runcontrol.control.operator import historian_in
from runcontrol.errors import Refused, RequestFailed

REFRESH_S = 0.5
SPARK_SPAN_S = 3600.0
SPARK_POINTS = 20
SPARK_EVERY_S = 10.0   # how often the live view asks the historian again
HISTORY_NAMES_MAX = 60
SPARKS = "▁▂▃▄▅▆▇█"
LIVE_TIMEOUT_S = 2.0  # past this the view says the server is unreachable, and keeps trying
NOTE_KEY = "n"        # in the live view: write a note to the logbook
SAID_S = 10.0         # how long what came of a note stays on top of the view
STATE_STYLES = {"RUNNING": "green", "REGISTERED": "green", "STARTING": "yellow", "BACKOFF": "yellow", "STOPPING": "yellow",
                "STOPPED": "dim", "EXITED": "dim", "FATAL": "bold red", "UNKNOWN": "bold magenta"}
RUN_STYLES = {"RUN": "bold green", "READY": "bold yellow", "STOP": "bold", "PAUSED": "bold black on yellow"}
ALARMS = {"program_fatal", "client_lost", "host_unreachable", "alarm_raised"}
SEQUENCE_EVENTS = ("queued", "started", "step", "run", "paused", "resumed", "skipped", "aborted", "done")
MAINTENANCE_EVENTS = ("maintenance", "maintenance_ended")   # the notifier's (clients/notifier.py)
LOGBOOK_EVENTS = ("logbook_entry",)                         # the logbook's (clients/logbook.py)
NOTABLE = {"program_restarting", "program_fatal", "program_exited", "client_lost", "run_state",
           "server_started", "client_replaced", "host_unreachable", "host_reachable", "alarm_raised",
           "alarm_cleared", "alarm_acked", "run_progress", *(f"sequence_{what}" for what in SEQUENCE_EVENTS),
           *MAINTENANCE_EVENTS, *LOGBOOK_EVENTS}
NAMES_SHOWN = 3        # names listed in the transition's line; more are counted
WHY_MIN = 20           # characters of a pause's why at least, before the run's comment
HELD_TEXT_MIN = 12     # characters at least of what a participant holding a transition says
MAINTENANCE_ROWS = 2   # lines for open maintenance windows at most; more are counted on the last
# Program columns, most important first; the narrowest terminals keep only the first ones.
COLUMNS = [("program", 12), ("state", 8), ("pid", 7), ("up", 5), ("rst", 3), ("reg", 3), ("hb", 4),
           ("cpu%", 5), ("rss", 5), ("host", 8)]


def age(seconds):
    if not isinstance(seconds, (int, float)):
        return ""
    seconds = max(0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def span(seconds):
    """A duration: seconds under a minute, then minutes and seconds (1m 20s), then hours and minutes."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def size(value):
    if not isinstance(value, (int, float)):
        return ""
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}"
        value /= 1024


def as_dict(value):
    return value if isinstance(value, dict) else {}


def as_list(value):
    return value if isinstance(value, list) else []


def short(value, width):
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def standing_alarms(snap):
    return [a for a in as_list(as_dict(snap.get("run")).get("alarms")) if isinstance(a, dict)]


def alarm_line(alarm, now, width):
    """One standing alarm: red until acknowledged, then yellow; a cleared one says so."""
    acked, cleared = as_dict(alarm.get("acked")), alarm.get("state") == "cleared"
    raised = alarm.get("raised")
    when = f"  {age(now - raised)} ago" if isinstance(raised, (int, float)) else ""
    tail = (" (cleared)" if cleared else "") + (f" acked by {acked.get('by')}" if acked else "")
    style = "yellow" if acked else "red" if cleared else "bold white on red"
    text = f"{str(alarm.get('severity', 'alarm')).upper():7} {alarm.get('message')}  [{alarm.get('alarm')}]{when}{tail}"
    return Text(short(text, width), style=style)


def alarms_block(snap, width, rows):
    alarms = standing_alarms(snap)
    lines = [alarm_line(a, snap["taken"], width) for a in alarms[:rows]]
    if len(alarms) > rows:
        lines[-1] = Text(f"... and {len(alarms) - rows + 1} more alarms (send.py run alarms)", style="red")
    return Group(*lines)


def maintenance_held(snap):
    """(name, windows) of the notifier's retained `<notifier>.maintenance` {"active", "windows"}, whatever its
    client name; (None, []) without one."""
    for key, held in as_dict(snap.get("retained")).items():
        data = as_dict(as_dict(held).get("data"))
        if str(key).endswith(".maintenance") and isinstance(data.get("windows"), list):
            return key, data["windows"]
    return None, []


def maintenance_windows(snap):
    """The notifier's maintenance windows still open at the snapshot's time."""
    return [w for w in maintenance_held(snap)[1] if isinstance(w, dict) and isinstance(w.get("until"), (int, float))
            and w["until"] > snap["taken"]]


def maintenance_text(window, now):
    """One open window: until when (UTC), who, why, and what it holds back."""
    until, names = window["until"], {k: [str(n) for n in as_list(window.get(k))] for k in ("alarms", "programs")}
    shown = "%H:%M" if time.gmtime(until)[:3] == time.gmtime(now)[:3] else "%Y-%m-%d %H:%M"
    held = " and ".join(filter(None, [", ".join(names["alarms"]),
                                      names["programs"] and "alarms of " + ", ".join(names["programs"])]))
    return (f"MAINTENANCE until {time.strftime(shown, time.gmtime(until))} UTC ({window.get('by')}): "
            f"{window.get('reason')}; {held or 'all notifications'} held back")


def maintenance_block(windows, now, width, rows):
    lines = [Text(short(maintenance_text(w, now), width), style="bold black on yellow") for w in windows[:rows]]
    if len(windows) > rows:
        lines[-1] = Text(f"... and {len(windows) - rows + 1} more maintenance windows (send.py run notifications)",
                         style="bold yellow")
    return Group(*lines)


def header(snap, width, hint=None):
    """The server's line, the run's (after it `hint`, the keys the view takes), and while it applies, who holds the
    transition under way and who is left out of runs."""
    server, run = as_dict(snap.get("server")), as_dict(snap.get("run"))
    rate = as_dict(as_dict(snap.get("stats")).get("total")).get("msgs_in_per_s", 0)
    line = Text.assemble((str(server.get("experiment", "?")), "bold"), f"  server {server.get('instance', '?')} ",
                         f"up {age(server.get('uptime'))}  {server.get('clients', '?')} clients  ",
                         f"{rate if isinstance(rate, (int, float)) else 0:.0f} msg/s")
    keys = (f"  {hint}" if hint else "", "dim")
    if not run:
        why = snap.get("run_error") or "no run controller registered"
        return Group(line, Text.assemble((f"run: unknown ({why})", "yellow"), keys, no_wrap=True, overflow="crop"))
    state, current = str(run.get("state", "?")), as_dict(run.get("current_run"))
    started = current.get("start")
    running = f"  for {age(snap['taken'] - started)}" if isinstance(started, (int, float)) and state == "RUN" else ""
    comment = f"  \"{short(current.get('comment'), 30)}\"" if current.get("comment") else ""
    number = run.get("run")
    head = f"  number {number if number is not None else '-'}{running}"
    paused = ""
    if state == "PAUSED":   # the pause's why before the run's comment
        room = width - len(f"run {state}{head}{keys[0]}")
        comment = comment if room - len(comment) >= len(pause_text(current, snap["taken"], 0)) else ""
        paused = pause_text(current, snap["taken"], room - len(comment))
    lines = [line, Text.assemble("run ", (state, RUN_STYLES.get(state, "bold")), head, (paused, "yellow"), comment,
                                 keys, no_wrap=True, overflow="crop")]
    if isinstance(run.get("transition"), dict):
        lines.append(Text(short(transition_text(run["transition"], snap["taken"], width), width), style="yellow"))
    if as_dict(run.get("excluded")):
        lines.append(Text(short(excluded_text(run["excluded"]), width), style="yellow"))
    return Group(*lines)


def header_rows(snap):
    run = as_dict(snap.get("run"))
    return 2 + isinstance(run.get("transition"), dict) + bool(as_dict(run.get("excluded")))


def pauser(by):
    """Who paused, in a word: the operator, else the client that asked; None for an alarm (its `why` names it)."""
    if not isinstance(by, dict):
        return by if isinstance(by, str) and by else None
    return by.get("operator") or (None if by.get("alarm") else by.get("client"))


def pause_text(current, now, room):
    """The pause under way: for how long, by whom, why (cut to leave `room` for the line)."""
    pauses = [p for p in as_list(current.get("pauses")) if isinstance(p, dict)]
    last = pauses[-1] if pauses else {}
    at = last.get("at")
    text = f"  paused for {span(now - at)}" if isinstance(at, (int, float)) else "  paused"
    who = pauser(last.get("by"))
    text += f" by {who}" if who else ""
    why = str(last.get("why") or "")
    return text + (f": {short(why, max(WHY_MIN, room - len(text) - 2))}" if why else "")


def names(listed):
    listed = [str(n) for n in listed]
    more = f" and {len(listed) - NAMES_SHOWN} more" if len(listed) > NAMES_SHOWN + 1 else ""
    return ", ".join(listed if not more else listed[:NAMES_SHOWN]) + more


def held_text(name, held, now, room):
    """One participant holding a transition: how far along, what it says (in `room` characters), for how long."""
    fraction, since = held.get("fraction"), held.get("since")
    words = [str(name), f"{fraction:.0%}" if isinstance(fraction, (int, float)) else "",
             short(str(held.get("text") or ""), room) if room > 0 else "",
             f"(for {span(now - since)})" if isinstance(since, (int, float)) else ""]
    return " ".join(w for w in words if w)


def transition_text(transition, now, width):
    """Where the transition under way is: its stage and who it waits for, those holding it first (how far along,
    what they say, for how long), in `width` characters when it can."""
    t = as_dict(transition)
    text = f"{t.get('transition', '?')} of run {t.get('run', '-')}: stage {t.get('stage', '?')}/{t.get('stages', '?')}"
    if t.get("taking_back"):
        return f"{text} refused: taking back what was done"
    holders = {str(n): as_dict(h) for n, h in as_dict(t.get("holders")).items()}
    others = [str(n) for n in as_list(t.get("waiting")) if str(n) not in holders]

    def line(room):
        waiting = [held_text(name, h, now, room) for name, h in holders.items()] + others
        return text + (f", waiting for {names(waiting)}" if waiting else "")
    spare = width - len(line(0)) - len(holders)   # a space before each holder's words
    return line(max(HELD_TEXT_MIN, spare // max(1, len(holders))))


def excluded_text(excluded):
    """The participants left out of runs, and why."""
    said = []
    for name, why in as_dict(excluded).items():
        why = as_dict(why)
        words = "; ".join(filter(None, [str(why.get("why") or ""), "stopped" if why.get("stopped") else ""]))
        said.append(f"{name} ({words})" if words else str(name))
    return "left out: " + ", ".join(said)


def program_cells(name, info):
    state = str(info.get("state", "?"))
    registered = info.get("registered")
    cpu = info.get("cpu_percent")
    marked = f"{short(name, 11)}*" if info.get("config_changed") else short(name, 12)   # settings changed in the run
    return {"program": Text(marked, style="yellow" if info.get("config_changed") else None),
            "state": Text(state, style=STATE_STYLES.get(state)),
            "pid": Text(str(info.get("pid") or "")), "up": Text(age(info.get("uptime"))),
            "rst": Text(str(info.get("restarts", ""))),
            "reg": Text("" if registered is None else "yes" if registered else "no",
                        style=None if registered is not False else "yellow"),
            "hb": Text(age(info.get("heartbeat_age"))),
            "cpu%": Text(f"{cpu:.0f}" if isinstance(cpu, (int, float)) else ""),
            "rss": Text(size(info.get("rss"))), "host": Text(short(str(info.get("host", "")), 8))}


def fitting_columns(width):
    chosen, used = [], 0
    for name, cells in COLUMNS:
        if used + cells + 3 > width:
            break
        chosen.append(name)
        used += cells + 3
    return chosen


def rows_of(snap):
    """The run controller's programs; without one, the registered clients."""
    if snap.get("run"):
        return as_dict(as_dict(snap["run"]).get("programs"))
    now = snap["taken"]
    return {str(c.get("name")): {"state": "REGISTERED", "pid": c.get("pid"), "host": c.get("host"),
                                 "uptime": now - c["connected_at"] if isinstance(c.get("connected_at"), (int, float))
                                 else None, "registered": True,
                                 "heartbeat_age": now - c["last_seen"] if isinstance(c.get("last_seen"), (int, float))
                                 else None}
            for c in as_list(snap.get("clients")) if isinstance(c, dict)}


def programs_table(snap, width):
    programs = rows_of(snap)
    columns = fitting_columns(width)
    title = "programs" if snap.get("run") else "clients (no run controller)"
    table = Table(*columns, title=title, title_justify="left", box=None, padding=(0, 1))
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ellipsis"
    for name, info in programs.items():
        cells = program_cells(str(name), as_dict(info))
        table.add_row(*(cells[c] for c in columns))
    return table


def hosts_of(snap):
    return as_dict(as_dict(snap.get("run")).get("hosts"))


def host_cells(name, info, programs):
    figures = as_dict(info.get("figures"))
    load = as_list(figures.get("load"))
    mine = [str(p) for p in as_list(info.get("programs"))]
    running = sum(1 for p in mine if as_dict(programs.get(p)).get("state") == "RUNNING")
    reachable = info.get("reachable")
    cpu, memory = figures.get("cpu_percent"), figures.get("memory_percent")
    return [short(name, 10), Text("up" if reachable else "LOST", style="green" if reachable else "bold magenta"),
            f"{load[0]:.2f}" if load and isinstance(load[0], (int, float)) else "",
            f"{cpu:.0f}" if isinstance(cpu, (int, float)) else "",
            f"{memory:.0f}" if isinstance(memory, (int, float)) else "", size(figures.get("disk_free")),
            f"{running}/{len(mine)}", "" if reachable else str(info.get("problem") or "")]


def hosts_table(snap, width):
    """A line per other host: reachable or not (and why), load, CPU, memory, free data space, programs up."""
    table = Table("host", "state", "load", "cpu%", "mem%", "free", "progs", "problem", title="hosts",
                  title_justify="left", box=None, padding=(0, 1))
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ellipsis"
    table.columns[-1].max_width = max(10, width - 60)
    programs = as_dict(as_dict(snap.get("run")).get("programs"))
    for name, info in sorted(hosts_of(snap).items()):
        table.add_row(*host_cells(str(name), as_dict(info), programs))
    return table


def monitored(snap):
    """Each published number the server retains, as (name, value, ts); hosts, alarms and maintenance windows have
    places of their own."""
    found, maintenance = [], maintenance_held(snap)[0]
    for key, held in sorted(as_dict(snap.get("retained")).items()):
        held = as_dict(held)
        if str(key).startswith(("host.", "run.alarm.")) or key == maintenance:
            continue
        found += [(name, value, held.get("ts")) for name, value in protocol.published_numbers(str(key), held.get("data"),
                                                                                              [])]
    return found


def history_request(snap, historian, names_max=HISTORY_NAMES_MAX):
    """The `history` request for the sparklines of the numbers `snap` shows, or None without a historian."""
    names = [name for name, _, _ in monitored(snap)][:names_max]
    if not historian or not names:
        return None
    return {"to": historian, "cmd": "history", "names": names, "since": -SPARK_SPAN_S, "points": SPARK_POINTS}


def sparkline(buckets, now, width=SPARK_POINTS):
    """The last hour of a value in `width` block characters (a time without values stays blank)."""
    slot_s = SPARK_SPAN_S / width
    means = {}
    for bucket in as_list(buckets):
        if isinstance(bucket, list) and len(bucket) == 4 and all(isinstance(v, (int, float)) for v in bucket):
            slot = int((bucket[0] - (now - SPARK_SPAN_S)) // slot_s)
            if 0 <= slot < width:
                means[slot] = bucket[3]
    if not means:
        return ""
    low, high = min(means.values()), max(means.values())
    span = (high - low) or 1.0
    return "".join(SPARKS[round((means[i] - low) / span * (len(SPARKS) - 1))] if i in means else " "
                   for i in range(width))


def number(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def retained_table(snap, width, rows):
    table = Table("value", "now", "last hour", "age", title="monitoring", title_justify="left", box=None,
                  padding=(0, 1))
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ellipsis"
    history = as_dict(snap.get("history"))
    for name, value, ts in monitored(snap)[:rows]:
        table.add_row(short(name, max(12, width - SPARK_POINTS - 28)), number(value),
                      Text(sparkline(history.get(name), snap["taken"]), style="cyan"),
                      age(snap["taken"] - ts) if isinstance(ts, (int, float)) else "")
    return table


def event_text(event):
    """The gist of an event, most telling words first (the line may be cut at the right)."""
    kind, e = event.get("kind"), event
    if (kind in ("run_state", "run_progress") or kind in MAINTENANCE_EVENTS or kind in LOGBOOK_EVENTS
            or str(kind).startswith("sequence_")) and e.get("message"):
        return str(e["message"])
    if kind == "program_exited":
        how = f"killed by {e['signal']}" if e.get("signal") else e.get("error") or f"exited with status {e.get('code')}"
        return f"{e.get('program')} {how}" + (f" ({e['reason']})" if e.get("reason") else "")
    if kind == "program_restarting":
        return f"{e.get('program')} restart {e.get('restarts')} after {e.get('delay')} s"
    if kind == "program_fatal":
        return f"{e.get('program')}: {e.get('reason')}"
    if kind in ("client_lost", "client_replaced"):
        return f"{e.get('name')}: {e.get('reason')}"
    if kind == "host_unreachable":
        return f"host {e.get('host')} cannot be reached: {e.get('error')}"
    if kind == "host_reachable":
        return f"host {e.get('host')} is back"
    if kind == "server_started":
        return f"instance {e.get('instance')} pid {e.get('pid')}"
    if kind in ("alarm_raised", "alarm_cleared"):
        return f"{e.get('alarm')}: {e.get('message')}"
    if kind == "alarm_acked":
        return f"{e.get('alarm')} by {as_dict(e.get('acked')).get('by')}"
    detail = {k: v for k, v in e.items() if k not in ("kind", "ts", "actions", "meta", "tail", "from")}
    return " ".join(f"{k}={short(v, 24)}" for k, v in detail.items() if v is not None)


def notable_events(snap):
    """The events worth a line, newest first: of a transition's progress, only the latest."""
    shown, progressed = [], set()
    for event in as_list(snap.get("events")):
        if not isinstance(event, dict) or event.get("kind") not in NOTABLE:
            continue
        if event["kind"] == "run_progress":
            which = (str(event.get("transition")), str(event.get("run")))
            if which in progressed:
                continue
            progressed.add(which)
        shown.append(event)
    return shown


def events_table(snap, width, rows):
    table = Table("time", "event", "detail", title="events", title_justify="left", box=None, padding=(0, 1))
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ellipsis"
    for event in notable_events(snap)[:rows]:  # newest first
        kind = str(event.get("kind"))
        ts = event.get("ts")
        table.add_row(logsetup.utc_stamp(ts)[11:19] if isinstance(ts, (int, float)) else "",
                      Text(kind, style="bold red" if kind in ALARMS else None),
                      short(event_text(event), max(10, width - 32)))
    return table


def render(snap, width=80, height=24, note=None, hint=None):
    """The whole view for a terminal of `width` x `height`: nothing wraps, lower parts shrink first; `note` on top,
    `hint` (the keys it takes) after the run's line."""
    programs, hosts = len(rows_of(snap)), len(hosts_of(snap))
    alarm_rows = min(len(standing_alarms(snap)), max(1, height // 4))
    windows = maintenance_windows(snap)
    maintenance_rows = min(len(windows), MAINTENANCE_ROWS)
    spare = max(0, height - header_rows(snap) - (programs + 2) - (hosts + 2 if hosts else 0) - (1 if note else 0)
                - alarm_rows - maintenance_rows)
    retained_rows = min(len(monitored(snap)), max(0, (spare - 4) // 2))
    event_rows = max(0, spare - 4 - retained_rows)
    parts = [Text(note, style="bold yellow")] if note else []
    parts += [alarms_block(snap, width, alarm_rows)] if alarm_rows else []
    parts += [maintenance_block(windows, snap["taken"], width, maintenance_rows)] if maintenance_rows else []
    parts += [header(snap, width, hint), programs_table(snap, width)]
    parts += [hosts_table(snap, width)] if hosts else []
    parts += [retained_table(snap, width, retained_rows), events_table(snap, width, event_rows)]
    return Group(*parts)


def render_safely(snap, console, note=None, hint=None):
    try:
        return render(snap, console.width, console.height, note, hint)
    except Exception as exc:  # whatever the network sent, the view goes on
        return Text(f"cannot show this snapshot: {type(exc).__name__}: {exc}", style="red")


def snapshot(op, last=None):
    """A snapshot with the sparklines' history: asked with it when `last` (or a first snapshot) says what to ask."""
    base = last or op.snapshot()
    ask = history_request(base, historian_in(base.get("clients")))
    if ask:
        return op.snapshot(optional={"history": ask})
    return op.snapshot() if last else base


def live(op, console):
    last, lost_since, history, asked = None, None, {}, 0.0
    said, said_until = None, 0.0
    with Keys(sys.stdin) as keys, Live(console=console, refresh_per_second=4, screen=True,
                                        vertical_overflow="crop") as view:
        hint = None
        if keys.fd is not None:
            op.client.watch(keys.fd, lambda: keys.take() or op.client.unwatch(keys.fd))
            hint = f"{NOTE_KEY}: write a note"
        while True:
            if keys.pressed(NOTE_KEY) and last is not None:
                view.stop()
                with keys.typing():   # the client keeps answering its server while a person types
                    said = write_note(op, last, lambda words: keys.ask(console, words, op.client.poll))
                said_until = time.monotonic() + SAID_S
                view.start()
            told = said if time.monotonic() < said_until else None
            try:
                due = last is not None and time.monotonic() - asked >= SPARK_EVERY_S
                last, lost_since = snapshot(op, last) if due else op.snapshot(), None
                if due:
                    history, asked = as_dict(last.get("history")), time.monotonic()
                last["history"] = history
                view.update(render_safely(last, console, told, hint))
            except RequestFailed as exc:
                lost_since = lost_since or time.time()
                note = (f"server unreachable since {logsetup.utc_stamp(lost_since)[11:19]} UTC: "
                        f"showing the last snapshot; reconnecting ({type(exc).__name__})")
                view.update(render_safely(last, console, note, hint) if last else Text(note, style="bold yellow"))
            op.client.poll(REFRESH_S)


class Keys:
    """Keys pressed in the terminal, one at a time (no echo, no waiting for Enter; Ctrl-C still interrupts), or
    whole lines while `typing`; none when standard input is no terminal. `take` reads them when the terminal is
    readable (the live loop watches it)."""

    def __init__(self, stream):
        self.fd = stream.fileno() if stream.isatty() else None
        self.saved, self.held, self.gone = None, "", False

    def __enter__(self):
        if self.fd is not None:
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def take(self):
        """Read what was typed (the terminal is readable); False when it is gone."""
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            data = b""
        self.held += data.decode(errors="replace")
        self.gone = not data
        return not self.gone

    def pressed(self, key):
        """Whether `key` was pressed since the last look (other keys are let go)."""
        found, self.held = key in self.held, ""
        return found

    @contextlib.contextmanager
    def typing(self):
        """The terminal as it was (echo, whole lines) meanwhile: for questions."""
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        self.held = ""
        try:
            yield
        finally:
            if self.saved is not None:
                tty.setcbreak(self.fd)
            self.held = ""

    def ask(self, console, words, wait):
        """The line typed after `words` (`wait(seconds)` meanwhile, which reads the terminal when it can)."""
        console.print(words, end="", markup=False, highlight=False)
        while "\n" not in self.held:
            if self.gone:
                raise EOFError("the terminal is gone")
            wait(REFRESH_S)
        line, _, self.held = self.held.partition("\n")
        return line.strip()


def write_note(op, snap, ask):
    """Ask for a note (its text, its run, who writes it: `ask(words)` is the answer to a question) and send it to
    the logbook; what came of it, in a line."""
    text = ask("A note for the logbook (Markdown, one line; Enter sends it, an empty one is not sent)\nnote: ")
    if not text:
        return "no note written"
    run = as_dict(snap.get("run")).get("run")
    given = ask(f"run (Enter: {run if run is not None else 'none'}; a run number, - for none): ")
    if given:
        run = int(given) if given.isdigit() else None
    by = ask(f"by (Enter: {user() or 'this view'}): ") or user()
    try:
        entry = op.logbook.note(text, run=run, by=by)
    except Refused as exc:
        return f"the logbook refused the note: {exc}"
    except RequestFailed as exc:
        return f"the note was not written: {exc}"
    return f"note {entry['entry']} written to the logbook" + (f" on run {run}" if run is not None else "")


def user():
    """The name of who sits at this terminal, or None."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def plot(name, buckets, width=80, height=20):
    """A terminal plot of one value's history (`history` buckets [ts, min, max, mean]): the mean as a line, the
    min and max as points; a time with no value stays a gap (each run of buckets is drawn on its own)."""
    import plotext
    plotext.clear_figure()
    plotext.plotsize(width, height)
    plotext.title(name)
    plotext.date_form("H:M:S")
    times = [b[0] for b in buckets]
    step = min((b - a for a, b in zip(times, times[1:])), default=0)
    start = 0
    for i in range(1, len(buckets) + 1):
        if i == len(buckets) or buckets[i][0] - buckets[i - 1][0] > 1.5 * step:
            part = buckets[start:i]
            stamps = [time.strftime("%H:%M:%S", time.localtime(b[0])) for b in part]
            plotext.plot(stamps, [b[3] for b in part], color="green", marker="braille")
            start = i
    plotext.scatter([time.strftime("%H:%M:%S", time.localtime(b[0])) for b in buckets], [b[2] for b in buckets],
                    color="red", marker="dot")
    plotext.scatter([time.strftime("%H:%M:%S", time.localtime(b[0])) for b in buckets], [b[1] for b in buckets],
                    color="blue", marker="dot")
    return plotext.build()
