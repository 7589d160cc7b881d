"""What differs between the settings of run `a` and run `b` (default: the settings now).

  {"to": "run", "cmd": "config_diff", "id": 1, "a": 12, "b": 13}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"bias": {"volts": [60, 40]}, "lta1": {"samples": [1, 4]}}}
  {program: {setting: [in a, in b]}}; a setting one side lacks is null there. `{}`: nothing differs.

Errors: `bad_field` (`a` or `b` is not a run number), `no_such_run` (no settings were saved for that run),
`bad_state` (its file cannot be read).
"""

from runcontrol.control.commands.base import RUN_NUMBER

NAME = "config_diff"
ACTS = False
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {"a": RUN_NUMBER, "b": RUN_NUMBER}, "required": ["a"]}


def handle(ctl, msg):
    return ctl.configs.compare(msg["a"], msg.get("b"))
