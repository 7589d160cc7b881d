#!/usr/bin/env python3
"""The status of a running Orbit system: server, run, programs, monitoring values, recent events.

  python status.py            a live view, refreshed twice a second (Ctrl-C to leave)
  python status.py --once     one snapshot
  python status.py --json     one snapshot as JSON, for scripts
  python status.py --plot cryo.values.temperature [--since 3600]
                              one value's history (from the historian) as a terminal plot

Like every tool it takes --server ADDR or --experiment NAME, and finds the server
by its beacon without either. Exit status: 0, 1 when --plot has nothing to draw,
2 for bad usage, 3 when no server answered.
"""

import argparse
import json
import os
import sys

from rich.console import Console

from runcontrol import logsetup
from runcontrol.control.operator import Operator
from runcontrol.control.view import LIVE_TIMEOUT_S, live, plot, render_safely, snapshot
from runcontrol.errors import ConfigError, Refused, RequestFailed, ServerUnavailable

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_SERVER = 0, 1, 2, 3


def show_plot(op, name, since, console):
    historian = op.historian()
    if historian is None:
        print("status.py: no historian is registered: no history to plot", file=sys.stderr)
        return EXIT_ERROR
    answer = op.request(historian, "history", name=name, since=-abs(since), points=max(20, console.width - 10))
    buckets = answer.get(name) if isinstance(answer, dict) else None
    if not buckets:
        known = ", ".join(sorted(answer)[:10]) if isinstance(answer, dict) and answer else "none"
        print(f"status.py: no values of {name} in the last {since:g} s (names starting so: {known})",
              file=sys.stderr)
        return EXIT_ERROR
    print(plot(name, buckets, console.width, max(10, console.height - 2)))
    return EXIT_OK


def main(argv=None):
    parser = argparse.ArgumentParser(prog="status.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    parser.add_argument("--plot", metavar="NAME", help="plot one value's history (e.g. cryo.values.temperature)")
    parser.add_argument("--since", type=float, default=3600.0, metavar="SECONDS",
                        help="how far back --plot looks (default 3600)")
    parser.add_argument("--server", help="router address of the server (default: the beacon)")
    parser.add_argument("--experiment", help="experiment name or file whose server to show")
    parser.add_argument("--connect-timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    logsetup.configure("CRITICAL", sys.stderr)
    console = Console()
    try:
        with Operator(args.experiment, args.server, f"status-{os.getpid()}", args.connect_timeout,
                      timeout=LIVE_TIMEOUT_S) as op:
            if args.plot:
                return show_plot(op, args.plot, args.since, console)
            if args.json:
                print(json.dumps(op.snapshot(), indent=2, sort_keys=True))
            elif args.once:
                console.print(render_safely(snapshot(op), console))
            else:
                live(op, console)
    except ConfigError as exc:
        print(f"status.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"status.py: refused ({exc.code}): {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ServerUnavailable, RequestFailed) as exc:
        print(f"status.py: no answer: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except KeyboardInterrupt:
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
