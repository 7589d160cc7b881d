"""List the registered clients.

  {"cmd": "_list", "id": 1}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": [
       {"name": "lta1", "pid": 4242, "host": "daq1", "actions": {...}, "meta": {...},
        "connected_at": 1763737200.1, "last_seen": 1763737260.4, "msgs_in": 120, "msgs_out": 118}]}
"""

CMD = "_list"


def handle(server, conn, peer, msg):
    return [p.describe() for p in sorted(server.by_name.values(), key=lambda p: p.name)]
