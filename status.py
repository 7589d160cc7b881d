#!/usr/bin/env python3
"""The status of a running Orbit system: server, run, programs, monitoring values, recent events.

  python status.py            a live view, refreshed twice a second (Ctrl-C to leave)
  python status.py --once     one snapshot
  python status.py --json     one snapshot as JSON, for scripts

Like every tool it takes --server ADDR or --experiment NAME, and finds the server
by its beacon without either. Exit status: 0, 2 for bad usage, 3 when no server
answered.
"""

import argparse
import json
import os
import sys

from rich.console import Console

from runcontrol import logsetup
from runcontrol.control.operator import Operator
from runcontrol.control.view import LIVE_TIMEOUT_S, live, render_safely
from runcontrol.errors import ConfigError, RequestFailed, ServerUnavailable

EXIT_OK, EXIT_USAGE, EXIT_NO_SERVER = 0, 2, 3


def main(argv=None):
    parser = argparse.ArgumentParser(prog="status.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    parser.add_argument("--server", help="router address of the server (default: the beacon)")
    parser.add_argument("--experiment", help="experiment name or file whose server to show")
    parser.add_argument("--connect-timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    logsetup.configure("CRITICAL", sys.stderr)
    console = Console()
    try:
        with Operator(args.experiment, args.server, f"status-{os.getpid()}", args.connect_timeout,
                      timeout=LIVE_TIMEOUT_S) as op:
            if args.json:
                print(json.dumps(op.snapshot(), indent=2, sort_keys=True))
            elif args.once:
                console.print(render_safely(op.snapshot(), console))
            else:
                live(op, console)
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
