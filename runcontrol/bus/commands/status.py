"""The server's own status.

  {"cmd": "_status", "id": 1}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"instance": "9f2c41a0b7de", "pid": 4100,
      "started": 1763737200.0, "uptime": 61.5, "clients": 9, "experiment": "damicm",
      "router": "tcp://127.0.0.1:9820", "events": "tcp://127.0.0.1:9821", ...}}
"""

CMD = "_status"


def handle(server, conn, peer, msg):
    return server.status()
