"""The retained values, the last known state of the system; optionally under a prefix.

  {"cmd": "_retained", "id": 1, "prefix": "cryo."}
  -> {"cmd": "_reply", "re": 1, "ok": true,
      "result": {"cryo.temperature": {"data": {"ccd": 140.2}, "ts": 1763737260.5}}}
"""

from runcontrol import protocol
from runcontrol.errors import ProtocolError

CMD = "_retained"


def handle(server, conn, peer, msg):
    prefix = msg.get("prefix", "")
    if type(prefix) is not str:
        raise ProtocolError(protocol.BAD_FIELD, f"'prefix' must be a string, not {protocol.type_name(prefix)}")
    return {key: value for key, value in server.retained.items() if key.startswith(prefix)}
