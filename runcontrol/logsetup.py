"""Logging set-up for entry points: one line per record, stamped in UTC.

Only entry points (`run.py`, `send.py`, `python -m ...`) call `configure`.
"""

import argparse
import logging
import time

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class UtcFormatter(logging.Formatter):
    converter = time.gmtime


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure(level="INFO", stream=None):
    handler = logging.StreamHandler(stream)
    handler.setFormatter(UtcFormatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def utc_stamp(ts):
    """An ISO-8601 UTC stamp with milliseconds for a UNIX time."""
    return time.strftime(DATE_FORMAT, time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def service_arguments(prog, description, pidfile_help, argv=None):
    """Parse the arguments every Orbit service takes (--experiment, --pidfile, --log-level); set up logging."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--experiment", required=True, help="experiment name or JSON file")
    parser.add_argument("--pidfile", help=pidfile_help)
    parser.add_argument("--log-level", default="INFO", choices=LEVELS)
    args = parser.parse_args(argv)
    configure(args.log_level)
    return args
