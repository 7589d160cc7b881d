"""The client library: what every program on the bus is written with.

  from runcontrol.client import Client, required, Refused

A core without I/O (`core.py`: registration, requests and their answers, the
answer memory, the outbox; frames and calls go in, what to send and what
happened come out), the program's API over it (`program.py`, with its
handlers in `handlers.py` and its run hooks in `runhooks.py`), the blocking
driver (`client.py`, keeping its server with `connection.py`) and the asyncio
driver (`aio.py`) that feed it from their loops, on one timer heap
(`client.timers`), their sockets (`link.py`, `events.py`), the beacon checks
(`probe.py`), what a client needs to reach its experiment's bus
(`busaccess.py`) and central logging (`centrallog.py`). Must not reach into
the server, the supervision or the run controller.
"""

from runcontrol.client.client import Client, LogHandler
from runcontrol.client.core import required
from runcontrol.errors import Refused, RequestFailed

__all__ = ["Client", "LogHandler", "Refused", "RequestFailed", "required"]
