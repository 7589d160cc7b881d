"""Central logging: a logging handler that sends a program's records to the server as `_log`.

The server republishes them on the event stream as `log.<name>`. Safe to use
from any thread: records from other threads wait for the client's next poll.
"""

import logging


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
