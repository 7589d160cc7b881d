"""Publish data on the stream as pub.<from>.<topic>; with retain, keep the last value. The server numbers
its publications (`seq`: 1, 2, 3 ... from its start, so a subscriber of all `pub.` sees one it missed) and keeps
each for a while, for `_replay`.

  {"cmd": "_publish", "topic": "temperature", "data": {"ccd": 140.2}, "retain": true}
  -> published: topic "pub.cryo.temperature",
     {"from": "cryo", "topic": "temperature", "data": {"ccd": 140.2}, "ts": 1763737260.5, "retain": true,
      "seq": 8812}
  With an id: {"cmd": "_reply", "re": ID, "ok": true, "result": null}
"""

import time

from runcontrol import protocol
from runcontrol.errors import ProtocolError

CMD = "_publish"


def handle(server, conn, peer, msg):
    topic, retain = msg.get("topic"), msg.get("retain", False)
    if type(topic) is not str or not 0 < len(topic) <= protocol.MAX_TOPIC_LEN or not topic.isprintable() \
            or " " in topic:
        raise ProtocolError(protocol.BAD_FIELD,
                            f"'topic' must be a printable string of 1 to {protocol.MAX_TOPIC_LEN} "
                            "characters without spaces")
    if type(retain) is not bool:
        raise ProtocolError(protocol.BAD_FIELD, "'retain' must be true or false")
    if "data" not in msg:
        raise ProtocolError(protocol.BAD_FIELD, "'_publish' needs 'data'")
    now = time.time()
    key = f"{peer.name}.{topic}"
    encoded = server.publish(f"pub.{key}", {"from": peer.name, "topic": topic, "data": msg["data"],
                                            "ts": now, "retain": retain, "seq": next(server.publications)})
    server.replay.add(key, now, encoded)
    if retain:
        server.retained[key] = {"data": msg["data"], "ts": now}
    return None
