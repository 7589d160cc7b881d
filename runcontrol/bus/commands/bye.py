"""Unregister at once (a clean exit); allowed before _hello.

  {"cmd": "_bye", "id": 3}  ->  {"cmd": "_reply", "re": 3, "ok": true, "result": null}
"""

CMD = "_bye"


def handle(server, conn, peer, msg):
    if peer is not None:
        server.drop(peer, "client_left", "said goodbye")
    return None
