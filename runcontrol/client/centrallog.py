"""Central logging: a logging handler that sends a program's records to the server as `_log`.

The server republishes them on the event stream as `log.<name>`. Safe to use
from any thread: records from other threads wait for the client's next poll.
"""

import collections
import logging
import threading

BACKLOG = 1000   # records from other threads kept until the client's next poll


class LogHandler(logging.Handler):
    """Sends log records to the server as `_log` (central logging), republished as log.<name>."""

    def __init__(self, client, level=logging.INFO):
        super().__init__(level)
        self.client = client

    def emit(self, record):
        try:
            self.client.log_record(record.levelname, self.format(record), record.name)
        except Exception:  # logging must never raise into the program
            self.handleError(record)


class LogRelay:
    """Sends records with `send(level, text, logger)` from the client's own thread; others' wait for `flush`."""

    def __init__(self, send):
        self.send = send
        self.owner = threading.get_ident()
        self.backlog = collections.deque(maxlen=BACKLOG)
        self.busy = False   # a record logged while one is being sent waits, so logging never recurses

    def record(self, level, text, logger=""):
        if threading.get_ident() != self.owner or self.busy:
            self.backlog.append((level, text, logger))
            return
        self.busy = True
        try:
            self.send(level, text, logger)
        finally:
            self.busy = False

    def flush(self):
        if threading.get_ident() == self.owner:
            while self.backlog:
                self.record(*self.backlog.popleft())
