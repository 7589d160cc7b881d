"""Re-read the experiment file and apply the difference: programs, alarms, first settings of new programs.

  {"to": "run", "cmd": "reload", "id": 1}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"added": ["amp2"], "removed": ["old"], "changed": ["lta1"],
      "unchanged": ["cryo", "lta2"], "warnings": []}}
  Added programs start, removed ones stop, changed ones restart with their new description. Changes of `server`
  or `paths` apply when run.py is restarted (a warning says so).

Errors: `bad_experiment` (the file is invalid, or names another experiment: nothing changed, the text says why).
"""

NAME = "reload"
ACTS = True
WAIT_S = 0.0
SCHEMA = {"type": "object"}


def handle(ctl, msg):
    return ctl.reload()
