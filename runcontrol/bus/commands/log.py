"""Central logging: a record republished on the event stream as log.<from>.

  {"cmd": "_log", "level": "WARNING", "msg": "link to board dropped", "logger": "lta1.link"}
  -> published: topic "log.lta1",
     {"from": "lta1", "ts": 1763737260.2, "level": "WARNING", "msg": "...", "logger": "lta1.link"}
  With an id: {"cmd": "_reply", "re": ID, "ok": true, "result": null}
"""

import time

from runcontrol import protocol
from runcontrol.errors import ProtocolError

CMD = "_log"


def handle(server, conn, peer, msg):
    level, text, logger = msg.get("level", "INFO"), msg.get("msg"), msg.get("logger", "")
    if type(text) is not str or type(level) is not str or type(logger) is not str:
        raise ProtocolError(protocol.BAD_FIELD, "'msg', 'level' and 'logger' must be strings")
    server.publish(f"log.{peer.name}", {"from": peer.name, "ts": time.time(),
                                         "level": level, "msg": text, "logger": logger})
    return None

