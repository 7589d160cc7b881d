"""A run participant with settings, for tests: records each delivery of settings and each transition it gets.

Usage: configurable.py NAME RECORD_FILE [--bad-schema]
A gain of 7 is refused by the program itself.
"""

import argparse
import json
import os
import signal
import sys

from runcontrol.client.client import Client
from runcontrol.errors import Refused

SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "gain": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1, "description": "amplifier gain"},
        "threshold": {"type": "number", "default": 0.5, "live": True, "description": "trigger level, V"},
        "mode": {"enum": ["fast", "slow"], "default": "fast", "description": "readout mode"},
    },
}


class Configurable(Client):
    config_schema = SCHEMA

    def __init__(self, name, record, **kwargs):
        super().__init__(name, meta={"participant": True}, **kwargs)
        self.record = record

    def _note(self, **entry):
        with open(self.record, "a") as out:
            out.write(json.dumps({**entry, "pid": os.getpid()}) + "\n")

    def on_config(self, new, old):
        self._note(config=new, old=old)
        if new.get("gain") == 7:
            raise Refused("a gain of 7 is not allowed on this amplifier", "refused")

    def _transition(self, run):
        self._note(transition=run.transition, run=run.number, settings=dict(self.config))

    on_prepare = on_begin = on_end = _transition


class BadSchema(Configurable):
    config_schema = {"type": "object", "properties": {"gain": {"type": "whole number"}}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("record")
    parser.add_argument("--bad-schema", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with (BadSchema if args.bad_schema else Configurable)(args.name, args.record) as client:
        client.connect(30)
        client.run_forever()


if __name__ == "__main__":
    main()
