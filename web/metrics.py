"""`/metrics`: the snapshot as Prometheus / OpenMetrics families, through prometheus_client.

Per program: state, up, restarts, uptime, CPU, RSS, heartbeat age; the server:
message rates and totals, clients, dropped messages, uptime; the run: state and
number; every published number the server retains (`orbit_value{name=...}`);
every standing alarm. Read from the web program's last snapshot: a scrape
never asks the bus. Must not change anything.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from runcontrol import protocol
from runcontrol.states import ChildState

RUN_STATES = ("STOP", "READY", "RUN", "PAUSED")


class SnapshotCollector:
    def __init__(self, feed):
        self.feed = feed

    def collect(self):
        snap = self.feed.snapshot or {}
        run = snap.get("run") or {}
        yield from program_families(run.get("programs") or {})
        yield from server_families(snap.get("server") or {}, snap.get("stats") or {})
        yield from run_families(run, snap.get("last_run"))
        yield value_family(snap.get("retained") or {})
        yield from alarm_families(run.get("alarms") or [])


def registry_for(feed):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(feed))
    return registry


def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def program_families(programs):
    state = GaugeMetricFamily("orbit_program_state", "1 for the state each program is in", labels=["program", "state"])
    up = GaugeMetricFamily("orbit_program_up", "1 when the program is RUNNING", labels=["program", "host"])
    restarts = CounterMetricFamily("orbit_program_restarts", "restarts since the run controller started",
                                   labels=["program"])
    figures = {key: GaugeMetricFamily(f"orbit_program_{key}", text, labels=["program"]) for key, text in (
        ("uptime_seconds", "seconds since the program started"), ("cpu_percent", "CPU, percent of one core"),
        ("rss_bytes", "resident memory"), ("heartbeat_age_seconds", "seconds since the server last heard it"))}
    sources = {"uptime_seconds": "uptime", "cpu_percent": "cpu_percent", "rss_bytes": "rss",
               "heartbeat_age_seconds": "heartbeat_age"}
    for name, info in sorted(programs.items()):
        if not isinstance(info, dict):
            continue
        for one in ChildState:
            state.add_metric([name, one.value], 1.0 if info.get("state") == one.value else 0.0)
        up.add_metric([name, str(info.get("host", ""))], 1.0 if info.get("state") == "RUNNING" else 0.0)
        if number(info.get("restarts")):
            restarts.add_metric([name], info["restarts"])
        for key, source in sources.items():
            if number(info.get(source)):
                figures[key].add_metric([name], info[source])
    return [state, up, restarts, *figures.values()]


def server_families(server, stats):
    total = stats.get("total") or {}
    families = []
    for key, text in (("msgs_in", "messages received by the server"), ("msgs_out", "messages sent by the server"),
                      ("bytes_in", "bytes received by the server"), ("bytes_out", "bytes sent by the server")):
        if number(total.get(key)):
            families.append(CounterMetricFamily(f"orbit_server_{key}", text, value=total[key]))
        if number(total.get(f"{key}_per_s")):
            families.append(GaugeMetricFamily(f"orbit_server_{key}_per_second", f"{text}, last second",
                                              value=total[f"{key}_per_s"]))
    if number(stats.get("dropped")):
        families.append(CounterMetricFamily("orbit_server_dropped", "messages the server dropped",
                                            value=stats["dropped"]))
    if number(server.get("clients")):
        families.append(GaugeMetricFamily("orbit_server_clients", "registered clients", value=server["clients"]))
    if number(server.get("uptime")):
        families.append(GaugeMetricFamily("orbit_server_uptime_seconds", "seconds since the server started",
                                          value=server["uptime"]))
    return families


def run_families(run, last_run):
    state = GaugeMetricFamily("orbit_run_state", "1 for the run state", labels=["state"])
    for one in RUN_STATES:
        state.add_metric([one], 1.0 if run.get("state") == one else 0.0)
    families = [state]
    if number(last_run):
        families.append(GaugeMetricFamily("orbit_run_number", "the current (or last prepared) run number",
                                          value=last_run))
    return families


def value_family(retained):
    values = GaugeMetricFamily("orbit_value", "each number clients publish, retained by the server", labels=["name"])
    for key, held in sorted(retained.items()):
        if isinstance(held, dict) and not str(key).startswith("host."):
            for name, value in protocol.published_numbers(str(key), held.get("data"), []):
                values.add_metric([name], value)
    return values


def alarm_families(alarms):
    active = GaugeMetricFamily("orbit_alarm_active", "1 while a standing alarm's condition holds",
                               labels=["alarm", "severity"])
    acked = GaugeMetricFamily("orbit_alarm_acknowledged", "1 once a standing alarm is acknowledged",
                              labels=["alarm", "severity"])
    for alarm in alarms:
        if isinstance(alarm, dict):
            labels = [str(alarm.get("alarm")), str(alarm.get("severity"))]
            active.add_metric(labels, 1.0 if alarm.get("state") == "active" else 0.0)
            acked.add_metric(labels, 1.0 if alarm.get("acked") else 0.0)
    return [active, acked]
