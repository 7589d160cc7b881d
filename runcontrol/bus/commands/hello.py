"""Register this connection under a name.

  {"cmd": "_hello", "id": 1, "name": "lta1", "pid": 4242, "host": "daq1",
   "actions": {"expose": "take one exposure"}, "meta": {"participant": true}}
  -> {"cmd": "_reply", "re": 1, "ok": true,
      "result": {"name": "lta1", "server": "9f2c41a0b7de", "heartbeat": 5.0, "timeout": 30.0,
                 "events": "tcp://127.0.0.1:9821"}}
  A name held by another live connection -> _error "name_taken".
"""

from runcontrol import protocol

CMD = "_hello"


def handle(server, conn, peer, msg):
    return server.hello(conn, peer, protocol.parse_hello(msg), msg.get("id"))
