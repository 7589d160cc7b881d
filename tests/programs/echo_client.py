"""A client for tests: echoes, fails, refuses, reports progress, and remembers its notes.

Usage: echo_client.py NAME [--experiment FILE] [--server ADDR]
"""

import argparse
import logging
import signal
import sys
import time

from runcontrol.client.client import Client
from runcontrol.errors import Refused


class Echo(Client):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes = []
        self.tallies = {}

    def cmd_echo(self, msg):
        """Answer with the payload."""
        return {k: v for k, v in msg.items() if k not in ("cmd", "id", "from", "to", "ts")}

    def cmd_note(self, msg):
        """Remember a one-way note."""
        self.notes.append(msg.get("seq"))

    def cmd_notes(self, msg):
        """The notes received so far, in order."""
        return self.notes

    def cmd_fail(self, msg):
        """Raise an error."""
        raise RuntimeError("the detector is on fire")

    def cmd_refuse(self, msg):
        """Refuse with a code."""
        raise Refused("40 V is above the 35 V limit", "out_of_range")

    def cmd_slow(self, msg):
        """Report progress, then answer."""
        for step in range(3):
            self.progress(msg, step=step)
            time.sleep(0.05)
        return "done"

    def cmd_sleep(self, msg):
        """Answer after `seconds` (blocking the client meanwhile)."""
        time.sleep(float(msg.get("seconds", 1)))
        return "awake"

    def cmd_tally(self, msg):
        """Count the runs of this request (by sender and id), answering after `seconds` (blocking meanwhile)."""
        key = f"{msg.get('from')}/{msg.get('id')}"
        self.tallies[key] = self.tallies.get(key, 0) + 1
        logging.info("tally %s started", key)
        time.sleep(float(msg.get("seconds", 0)))
        return self.tallies[key]

    def cmd_tallies(self, msg):
        """How often each request of `tally` ran."""
        return self.tallies

    def cmd_forward(self, msg):
        """Ask another client and answer with its result."""
        return self.request(msg["target"], "echo", timeout=5, via=self.name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--experiment")
    parser.add_argument("--server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Echo(args.name, experiment=args.experiment, server=args.server) as client:
        client.run_forever(0.2)


if __name__ == "__main__":
    main()
