"""python -m watchdog --pidfile PATH [--stale-after S] [--standby] -- COMMAND ...

Keeps COMMAND (the server, or the run controller) alive: restarted when it exits, and
when it stops touching PATH for S seconds. With --standby (only for a command that can
wait as a standby: the server), a copy of COMMAND is kept started ahead and takes over
at once. Exit status: 0 after SIGTERM or SIGINT, 1 when the command crash-loops, 2 for
bad usage or when another watchdog keeps PATH.
"""

import argparse
import sys

from runcontrol import logsetup
from runcontrol.standby import ENV as STANDBY_ENV
from watchdog.keeper import (DEFAULT_GRACE_S, DEFAULT_MAX_RESTARTS, DEFAULT_STALE_AFTER_S, DEFAULT_START_WITHIN_S,
                             DEFAULT_WINDOW_S,
                             Keeper, WatchdogError)


def positive(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m watchdog", description=__doc__.split("\n\n")[1],
                                     usage="%(prog)s --pidfile PATH [options] -- COMMAND ...")
    parser.add_argument("--pidfile", required=True, help="the pid file the command writes and touches")
    parser.add_argument("--stale-after", type=positive, default=DEFAULT_STALE_AFTER_S, metavar="S",
                        help=f"seconds without a touch before the command counts as hung "
                             f"(default {DEFAULT_STALE_AFTER_S:g})")
    parser.add_argument("--start-within", type=positive, default=DEFAULT_START_WITHIN_S, metavar="S",
                        help=f"seconds a starting command has to write its pid file before it counts as hung "
                             f"(default {DEFAULT_START_WITHIN_S:g}, at least --stale-after)")
    parser.add_argument("--grace", type=positive, default=DEFAULT_GRACE_S, metavar="S",
                        help=f"seconds between SIGTERM and SIGKILL (default {DEFAULT_GRACE_S:g})")
    parser.add_argument("--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS, metavar="N",
                        help=f"restarts allowed within --window (default {DEFAULT_MAX_RESTARTS})")
    parser.add_argument("--window", type=positive, default=DEFAULT_WINDOW_S, metavar="S",
                        help=f"seconds over which restarts are counted (default {DEFAULT_WINDOW_S:g})")
    parser.add_argument("--standby", action="store_true",
                        help=f"keep a copy of the command started ahead, which takes over when the one serving is "
                             f"gone (only for a command that can wait as a standby, such as the server; "
                             f"{STANDBY_ENV} in its environment tells it to)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to keep alive")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to keep alive after --")
    logsetup.configure("INFO")
    keeper = Keeper(command, args.pidfile, args.stale_after, args.grace, args.max_restarts, args.window,
                    standby=args.standby, start_within_s=args.start_within)
    try:
        return keeper.keep()
    except WatchdogError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return 2 if keeper.child is None and not keeper.restarts else 1


if __name__ == "__main__":
    sys.exit(main())
