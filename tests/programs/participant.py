"""A run participant for tests: records every transition it gets; can refuse one or stay silent on one.

Usage: participant.py NAME RECORD_FILE [--refuse TRANSITION] [--silent TRANSITION] [--meta-participant | --meta-run]
(--meta-run: the earlier name of the meta key, still accepted)
"""

import argparse
import json
import signal
import sys

from runcontrol.client.client import Client
from runcontrol.errors import Refused


class Participant(Client):
    def __init__(self, name, record, refuse, silent, **kwargs):
        super().__init__(name, **kwargs)
        self.record, self.refuse, self.silent = record, refuse, silent

    def _note(self, run):
        with open(self.record, "a") as out:
            out.write(json.dumps({"transition": run.transition, "run": run.number, "comment": run.comment,
                                  "params": run.params, "abort": run.abort, "rejoin": run.rejoin,
                                  "reason": run.reason}) + "\n")
        if run.transition == self.refuse:
            raise Refused(f"{self.name} will not {run.transition}", "not_ready")
        if run.transition == self.silent:
            return self.defer(run.msg)  # never answered
        return None

    on_prepare = on_begin = on_end = _note


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("record")
    parser.add_argument("--refuse")
    parser.add_argument("--silent")
    parser.add_argument("--meta-participant", action="store_true")
    parser.add_argument("--meta-run", action="store_true")
    parser.add_argument("--experiment")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    meta = {"participant": True} if args.meta_participant else {"run": True} if args.meta_run else {}
    with Participant(args.name, args.record, args.refuse, args.silent, experiment=args.experiment,
                     meta=meta) as client:
        client.connect(30)
        client.run_forever()


if __name__ == "__main__":
    main()
