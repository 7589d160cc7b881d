"""The base of the programs we ship (instruments, the monitor, the command client): a client that ticks,
publishes its values, and answers `status`.

An instrument steps its simulation every `period` seconds between polls of the
client (so pings are answered on time), publishes its monitoring values as
`pub.<name>.values` with `retain`, and answers `status` and `monitor` with them.
Built only on the client library.
"""

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import experiments
from runcontrol.client.client import Client
from runcontrol import logsetup
from runcontrol.errors import ConfigError, ServerUnavailable

PUBLISH_EVERY_S = 5.0


class Instrument(Client):
    """Subclasses define `values()` and may override `tick(dt)`."""

    def __init__(self, name, period_s=1.0, **kwargs):
        super().__init__(name, **kwargs)
        self.period_s = period_s
        self.log = logging.getLogger(f"clients.sim.{name}")
        self._published = 0.0

    def values(self):
        raise NotImplementedError

    def tick(self, dt):
        """Advance the simulation by `dt` seconds."""

    def cmd_status(self, msg):
        """The instrument's current values."""
        return self.values()

    def cmd_monitor(self, msg):
        """Monitoring values, for the monitor."""
        return self.values()

    def publish_values(self):
        self.publish("values", self.values(), retain=True)
        self._published = time.monotonic()

    def serve(self):
        """Tick, publish and serve until SIGTERM."""
        last = time.monotonic()
        self.publish_values()
        while True:
            self.poll(max(0.0, last + self.period_s - time.monotonic()))
            now = time.monotonic()
            if now - last >= self.period_s:
                self.tick(now - last)
                last = now
            if now - self._published >= PUBLISH_EVERY_S:
                self.publish_values()


def data_folder(experiment, name):
    """`<paths.data>/<name>` of the experiment (else var/data/<name>), created."""
    base = None
    if experiment:
        try:
            base = experiments.load(experiment).paths.data
        except ConfigError:
            pass
    folder = (base or Path("var/data")) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def serve_instrument(make, description, add_arguments=None, argv=None):
    """Entry point of an instrument: parse the common options, build it with `make(args)`, serve."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", required=True, help="client name to register as")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"),
                        help="experiment name or file (default: $ORBIT_EXPERIMENT)")
    parser.add_argument("--server", help="router address (default: $ORBIT_SERVER, else the beacon)")
    parser.add_argument("--period", type=float, default=1.0, help="simulation step, seconds")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with make(args) as instrument:
            instrument.connect(60)
            instrument.serve()
    except (ConfigError, ServerUnavailable) as exc:
        print(f"{args.name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
