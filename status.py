#!/usr/bin/env python3
"""The status of a running Orbit system: the server, its clients, retained values, recent events.

  python status.py            a live view, refreshed every second (Ctrl-C to leave)
  python status.py --once     one snapshot
  python status.py --json     one snapshot as JSON, for scripts

Exit status: 0, 2 for bad usage, 3 when no server answered.
"""

import argparse
import json
import os
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from clients.client import Client
from runcontrol import logsetup
from runcontrol.errors import ConfigError, RequestFailed, ServerUnavailable

EXIT_OK, EXIT_USAGE, EXIT_NO_SERVER = 0, 2, 3


def snapshot(client, events=10):
    """Everything the view shows, asked of the server."""
    return {"server": client.request(None, "_status"), "stats": client.request(None, "_stats"),
            "clients": client.request(None, "_list"), "retained": client.request(None, "_retained"),
            "events": client.request(None, "_logs", n=events), "taken": time.time()}


def age(seconds):
    seconds = max(0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(snap):
    server, now = snap["server"], snap["taken"]
    rate = snap["stats"].get("total", {}).get("msgs_in_per_s", 0)
    header = Text.assemble((f"{server['experiment']}", "bold"), f"  server {server['instance']} ",
                           f"pid {server['pid']}  up {age(server['uptime'])}  {server['clients']} clients  ",
                           f"{rate:.0f} msg/s")
    clients = Table("client", "host", "pid", "up", "seen", "in", "out", expand=False, title="clients")
    for c in snap["clients"]:
        clients.add_row(c["name"], str(c.get("host") or ""), str(c.get("pid") or ""),
                        age(now - c["connected_at"]), age(now - c["last_seen"]),
                        str(c["msgs_in"]), str(c["msgs_out"]))
    retained = Table("value", "data", "age", title="retained values")
    for key, value in sorted(snap["retained"].items()):
        retained.add_row(key, json.dumps(value["data"])[:40], age(now - value["ts"]))
    events = Table("time", "event", "detail", title="last events")
    for event in snap["events"]:
        detail = {k: v for k, v in event.items() if k not in ("kind", "ts", "actions", "meta")}
        style = "red" if event["kind"] in ("client_lost", "program_fatal") else None
        events.add_row(logsetup.utc_stamp(event["ts"])[11:19], Text(event["kind"], style=style),
                       json.dumps(detail)[:60])
    return Group(header, clients, retained, events)


def live(client, console):
    with Live(console=console, refresh_per_second=2, screen=False) as view:
        while True:
            try:
                view.update(render(snapshot(client)))
            except RequestFailed as exc:
                view.update(Text(f"server unreachable, retrying: {exc}", style="yellow"))
            client.poll(1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="status.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    parser.add_argument("--server", help="router address of the server (default: the beacon)")
    parser.add_argument("--experiment", help="experiment name or file whose server to show")
    parser.add_argument("--connect-timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    logsetup.configure("ERROR", sys.stderr)
    console = Console()
    try:
        with Client(f"status-{os.getpid()}", experiment=args.experiment, server=args.server) as client:
            client.connect(args.connect_timeout)
            if args.json:
                print(json.dumps(snapshot(client), indent=2, sort_keys=True))
            elif args.once:
                console.print(render(snapshot(client)))
            else:
                live(client, console)
    except ConfigError as exc:
        print(f"status.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ServerUnavailable, RequestFailed) as exc:
        print(f"status.py: no answer: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except KeyboardInterrupt:
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
