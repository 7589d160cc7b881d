"""Message and byte rates, per client and in total, refreshed once a second.

  {"cmd": "_stats", "id": 1}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"interval": 1.0, "updated": 1763737261.0,
      "dropped": 0, "total": {"msgs_in_per_s": 812.0, "bytes_in_per_s": 160400.0,
      "msgs_out_per_s": 809.0, "bytes_out_per_s": 171000.0, "msgs_in": 51234, ...},
      "clients": {"lta1": {"msgs_in_per_s": 12.0, ...}}}}
"""

CMD = "_stats"


def handle(server, conn, peer, msg):
    return server.stats
