"""The client library: what every program on the bus is written with.

  from runcontrol.client import Client, required, Refused

A core without I/O (`core.py`: registration, requests and their answers, the
outbox, handlers, run hooks), the blocking driver (`client.py`) and the asyncio
driver (`aio.py`) that feed it, their sockets (`link.py`, `events.py`), the
beacon checks (`probe.py`), what a client needs to reach its experiment's bus
(`busaccess.py`) and central logging (`centrallog.py`). Must not reach into the
server, the supervision or the run controller.
"""

from runcontrol.client.client import Client, LogHandler
from runcontrol.client.core import required
from runcontrol.errors import Refused, RequestFailed

__all__ = ["Client", "LogHandler", "Refused", "RequestFailed", "required"]
