"""Answer the server's ping; proves the client alive. Any message does too.

  {"cmd": "_pong"}                  (answer to a heartbeat ping)
  {"cmd": "_pong", "re": "claim-1"} (answer to a ping that carried an id)
"""

from runcontrol.bus.commands.base import ANSWERED

CMD = "_pong"


def handle(server, conn, peer, msg):
    server.pong(peer, msg.get("re"))
    return ANSWERED
