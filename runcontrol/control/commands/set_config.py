"""Change settings of a program: validated, delivered, applied once the program accepts them.

  {"to": "run", "cmd": "set_config", "id": 1, "program": "bias", "values": {"volts": 60}, "by": "anna"}
  {"to": "run", "cmd": "set_config", "id": 1, "program": "bias", "volts": 60}    (the settings as fields)
  -> {"cmd": "_reply", "re": 1, "ok": true, "result": {"program": "bias", "values": {"volts": 60, "ramp_rate": 10},
      "changes": {"volts": [40, 60]}}}
  Checked against the program's schema (nothing is applied on error), delivered as `_config`, logged with `by`
  (default: the sender) and announced as `config_changed` once the program accepts (within 10 s). Nothing that
  differs: answered at once, `changes` empty. During a run only settings marked "live" change.

Errors: `bad_field` (no `program`; `values` not an object, or no settings given; `by`), `unknown_program` (the
experiment has no such program), `no_settings` (it has not registered with a settings schema, or its schema or
settings are invalid), `busy` (a change of its settings is on its way), `bad_config` (the settings break its
schema: every problem with its path), `bad_state` (a setting not marked live, during a run), `refused` (the program
said no: its settings stay), `not_registered` (it is not registered now), `failed` (it did not answer within 10 s).
"""

from runcontrol import protocol
from runcontrol.control.commands.base import BY, ENVELOPE, PROGRAM
from runcontrol.control.configs import DELIVER_WAIT_S
from runcontrol.errors import Refused

NAME = "set_config"
ACTS = True
WAIT_S = DELIVER_WAIT_S
NOT_SETTINGS = ENVELOPE | {"program", "by", "values"}
SCHEMA = {"type": "object", "properties": {
    "program": PROGRAM,
    "values": {"type": "object", "minProperties": 1,
               "description": "an object of settings (or the settings as fields of the request)"},
    "by": BY},
    "required": ["program"]}


def handle(ctl, msg):
    values = msg["values"] if "values" in msg else {k: v for k, v in msg.items() if k not in NOT_SETTINGS}
    if not values:
        raise Refused("set_config needs 'values': an object of settings (or the settings as fields)",
                      protocol.BAD_FIELD)
    return ctl.configs.change(msg, msg["program"], values, protocol.parse_by(msg))
