"""The publications made after a time, oldest first, as the stream carried them: what a subscriber that was
away (restarted, stopped, or not yet subscribed) missed. The server keeps each `<from>.<topic>` for
`server.replay.seconds` (120) within `topic_bytes` and `max_bytes`, in memory: a restarted server starts empty.

  {"cmd": "_replay", "id": 1, "since": 1763737200.0, "prefix": "cryo.", "limit": 1000}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {
       "items": [{"from": "cryo", "topic": "values", "data": {"temperature": 140.2}, "ts": 1763737200.05,
                  "retain": false, "seq": 8812}, ...],
       "more": false, "next": 1763737261.3, "kept_from": 1763737141.3}}
  `since`: seconds since the epoch (after it, not at it), or negative: that long ago. `prefix` (default all)
  and `limit` (1 to 10000, default 1000) are optional. `more`: a page was full (at most `limit`, and small
  enough for the bus's max_message_bytes): ask again with `"since": next`. Without more, `next` is the
  server's time of the answer: ask from it next time to miss nothing. Every publication since `kept_from` is
  held; a `since` older than it may have missed some. A field of the wrong type -> _error "bad_field".
"""

import time

from runcontrol import protocol

CMD = "_replay"


def handle(server, conn, peer, msg):
    now = time.time()
    request = protocol.parse_replay(msg, now)
    return server.replay.page(request.since, request.prefix, request.limit, now)
