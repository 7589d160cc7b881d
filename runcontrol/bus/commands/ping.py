"""Check that the server is there; allowed before _hello.

  {"cmd": "_ping", "id": 7}  ->  {"cmd": "_pong", "re": 7}
"""

from runcontrol.bus.commands.base import ANSWERED

CMD = "_ping"


def handle(server, identity, peer, msg):
    pong = {"cmd": "_pong"}
    if "id" in msg:
        pong["re"] = msg["id"]
    server.answer(identity, pong)
    return ANSWERED
