"""Every program's settings as run `run` began.

  {"to": "run", "cmd": "run_config", "id": 1, "run": 12}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"bias": {"volts": 60, "ramp_rate": 10},
      "cryo": {"set_point": 140, "rate": 1}}}

Errors: `bad_field` (`run` is not a run number), `no_such_run` (no settings were saved for that run), `bad_state`
(its file cannot be read).
"""

from runcontrol.control.commands.base import RUN_NUMBER

NAME = "run_config"
ACTS = False
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {"run": RUN_NUMBER}, "required": ["run"]}


def handle(ctl, msg):
    return ctl.configs.run_settings(msg["run"])
