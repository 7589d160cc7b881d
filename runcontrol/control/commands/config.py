"""The settings of a program (values, schema, live settings, problems), or of every program that has any.

  {"to": "run", "cmd": "config", "id": 1, "program": "bias"}
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"values": {"volts": 60, "ramp_rate": 10},
      "schema": {"type": "object", "properties": {...}}, "live": ["ramp_rate"], "changed": 1763737200.1,
      "changed_in_run": false, "problem": null}}
  Without `program`: {"bias": {...}, "cryo": {...}} for every program that has settings. `problem`: what is wrong
  with its schema or settings ({"error", "problems"}), else null.

Errors: `bad_field` (`program` is not a name), `unknown_program` (the experiment has no such program).
"""

from runcontrol.control.commands.base import PROGRAM

NAME = "config"
ACTS = False
WAIT_S = 0.0
SCHEMA = {"type": "object", "properties": {"program": PROGRAM}}


def handle(ctl, msg):
    return ctl.configs.settings(msg.get("program"))
