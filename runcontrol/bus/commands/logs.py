"""The last n server events (client_joined, client_lost, program_* ...), newest first.

  {"cmd": "_logs", "id": 1, "n": 2}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": [
       {"kind": "client_joined", "ts": 1763737260.1, "name": "lta1", ...},
       {"kind": "server_started", "ts": 1763737200.0, "instance": "9f2c41a0b7de", ...}]}
"""

from runcontrol import protocol
from runcontrol.errors import ProtocolError

CMD = "_logs"
DEFAULT_N = 20


def handle(server, conn, peer, msg):
    n = msg.get("n", DEFAULT_N)
    if type(n) is not int or n < 0:
        raise ProtocolError(protocol.BAD_FIELD, f"'n' must be a non-negative integer, not {n!r}")
    events = server.events
    return [events[-1 - i] for i in range(min(n, len(events)))]
