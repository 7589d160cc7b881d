"""Announce an event on the stream as event.<kind> (how the run controller reports programs and runs).

  {"cmd": "_event", "kind": "program_exited", "program": "lta1", "code": -9}
  -> published: topic "event.program_exited",
     {"program": "lta1", "code": -9, "kind": "program_exited", "from": "run", "ts": 1763737260.3}
  With an id: {"cmd": "_reply", "re": ID, "ok": true, "result": null}
"""

from runcontrol import protocol
from runcontrol.errors import ProtocolError

CMD = "_event"
RESERVED = frozenset({"cmd", "to", "id", "re", "from", "ts", "kind"})


def handle(server, conn, peer, msg):
    kind = msg.get("kind")
    if not protocol.valid_name(kind):
        raise ProtocolError(protocol.BAD_FIELD, f"'kind' must be a name matching {protocol.NAME_RE.pattern}")
    payload = {k: v for k, v in msg.items() if k not in RESERVED}
    server.publish_event(kind, **payload, **{"from": peer.name})
    return None
