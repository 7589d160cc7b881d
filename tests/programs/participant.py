"""A run participant for tests: records every transition it gets (with the time, to see the order of stages); can
refuse one, stay silent on one, or defer one with progress.

Usage: participant.py NAME RECORD_FILE [--refuse TRANSITION] [--silent TRANSITION]
       [--defer TRANSITION SECONDS] [--meta-participant | --meta-run] [--order N]
(--meta-run: the earlier name of the meta key, still accepted; --defer: progress every 0.2 s, "draining K of N",
then the answer after SECONDS; 0 seconds: progress for ever, never an answer)
"""

import argparse
import json
import signal
import sys
import time

from runcontrol.client.client import Client
from runcontrol.errors import Refused


class Participant(Client):
    def __init__(self, name, record, refuse, silent, defer, **kwargs):
        super().__init__(name, **kwargs)
        self.record, self.refuse, self.silent = record, refuse, silent
        self.defers, self.defer_s = (defer[0], float(defer[1])) if defer else (None, 0.0)

    def _note(self, run):
        with open(self.record, "a") as out:
            out.write(json.dumps({"transition": run.transition, "run": run.number, "comment": run.comment,
                                  "params": run.params, "abort": run.abort, "rejoin": run.rejoin,
                                  "reason": run.reason, "at": time.time()}) + "\n")
        if run.transition == self.refuse:
            raise Refused(f"{self.name} will not {run.transition}", "not_ready")
        if run.transition == self.silent:
            return self.defer(run.msg)  # never answered
        if run.transition == self.defers and not run.rejoin:
            return self._draining(run)
        return None

    def _draining(self, run):
        """Report progress every 0.2 s; answer after defer_s (never, with 0)."""
        deferred = self.defer(run.msg)
        started, steps = time.monotonic(), max(1, round(self.defer_s / 0.2))

        def turn():
            done = time.monotonic() - started
            if self.defer_s and done >= self.defer_s:
                timer.cancel()
                deferred.resolve({"state": "STOP", "run": run.number, "drained": steps})
                return
            step = min(steps, int(done / 0.2) + 1)
            deferred.progress(fraction=round(step / steps, 3) if self.defer_s else None,
                              text=f"draining {step} of {steps if self.defer_s else '?'}")
        timer = self.timers.every(0.2, turn, first=0.0)
        return deferred

    on_prepare = on_begin = on_pause = on_resume = on_end = _note


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("record")
    parser.add_argument("--refuse")
    parser.add_argument("--silent")
    parser.add_argument("--meta-participant", action="store_true")
    parser.add_argument("--meta-run", action="store_true")
    parser.add_argument("--defer", nargs=2, metavar=("TRANSITION", "SECONDS"))
    parser.add_argument("--order", type=int)
    parser.add_argument("--experiment")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    meta = {"participant": True} if args.meta_participant else {"run": True} if args.meta_run else {}
    if args.order is not None:
        meta["order"] = args.order
    with Participant(args.name, args.record, args.refuse, args.silent, args.defer, experiment=args.experiment,
                     meta=meta) as client:
        client.connect(30)
        client.run_forever()


if __name__ == "__main__":
    main()
