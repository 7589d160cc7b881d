"""Logging set-up for entry points: one line per record, stamped in UTC.

Only entry points (`run.py`, `send.py`, `python -m ...`) call `configure`.
"""

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
