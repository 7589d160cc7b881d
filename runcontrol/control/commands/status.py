"""Every program's state and figures, the run, the hosts and the standing alarms.

  {"to": "run", "cmd": "status", "id": 1}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"experiment": "damicm", "state": "RUN", "run": 12,
      "current_run": {"run": 12, "comment": "dark current", "params": {"seconds": 600}, "start": 1763737200.1, ...},
      "participants": ["lta1", "lta2"],
      "programs": {"lta1": {"state": "RUNNING", "pid": 4242, "host": "daq1", "uptime": 61.5, "restarts": 0,
                            "last_exit": null, "client": "lta1", "registered": true, "cpu_percent": 3.1,
                            "rss": 40960000, "waiting_for": null, "cmd": "python -m clients.sim.lta ...",
                            "heartbeat_age": 0.8, "config_changed": false}, ...},
      "hosts": {"daq2": {"reachable": true, "problem": null, "figures": {...}, "programs": ["board2"]}},
      "clients": ["cryo", "lta1", ...], "alarms": [standing alarms], "controller": {"pid": 4100, "host": "daq1"}}}
  When the server does not list its clients within 2 s, the answer comes without them (heartbeat ages null).

Errors: none.
"""

NAME = "status"
ACTS = False
WAIT_S = 2.0
SCHEMA = {"type": "object"}


def handle(ctl, msg):
    return ctl.answer_status(msg)
