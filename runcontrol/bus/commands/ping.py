"""Check that the server is there; allowed before _hello.

  {"cmd": "_ping", "id": 7}  ->  {"cmd": "_pong", "re": 7}
"""

from runcontrol import protocol
from runcontrol.bus.commands.base import ANSWERED

CMD = "_ping"


def handle(server, conn, peer, msg):
    server.answer(conn, protocol.make_pong(msg.get("id")))
    return ANSWERED
