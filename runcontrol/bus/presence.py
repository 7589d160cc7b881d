"""How the server makes itself known, and how it leaves.

Owns the pid file (written when it starts serving, touched while it serves,
removed at the end if it is still ours), the beacon (and libABCD's IamABCD
beside it), the log lines and events that say the server started or is
stopping, and the warnings that an open bus gets. Must not take, route or
answer messages.
"""

import logging
import os
import signal

from runcontrol import discovery, pidfile, protocol
from runcontrol.errors import ConfigError

log = logging.getLogger("runcontrol.server")

TOUCH_INTERVAL_S = 0.5


class Presence:
    """`legacy` is the libABCD gateway (or None); `publish_event` puts the started and stopping events out."""

    def __init__(self, experiment, instance, started, addresses, pidfile_path, legacy, publish_event):
        spec = experiment.server
        self.experiment = experiment
        self.instance = instance
        self.router_address, self.events_address = addresses
        self.pidfile = pidfile_path
        self.legacy = legacy
        self.publish_event = publish_event
        payload = protocol.make_beacon(experiment.name, instance, self.router_address, self.events_address,
                                       os.getpid(), started)
        self.beacon = discovery.BeaconSender(spec.beacon.address, spec.beacon.port, payload)
        self.beacon_interval_s = spec.beacon.interval_s

    def arrive(self, timers):
        """Write the pid file, say so, and keep beaconing and touching it on `timers`.

        Raises ConfigError when the pid file cannot be written.
        """
        try:
            pidfile.write(self.pidfile)
        except OSError as exc:
            raise ConfigError(f"cannot write the pid file {self.pidfile}: {exc.strerror}") from None
        self._announce()
        timers.every(TOUCH_INTERVAL_S, lambda: pidfile.touch(self.pidfile))
        timers.every(self.beacon_interval_s, self._send_beacons, first=timers.clock())

    def _send_beacons(self):
        self.beacon.send()
        if self.legacy is not None:
            self.legacy.send_beacon()

    def _announce(self):
        log.info("server %s of %s: router %s, events %s, beacon %s:%s every %.1f s, pid file %s",
                 self.instance, self.experiment.name, self.router_address, self.events_address,
                 *self.beacon.target, self.beacon_interval_s, self.pidfile)
        spec = self.experiment.server
        # Said whenever the flag is set, on loopback too: it is what lets the address go off loopback unchecked.
        if self.legacy is not None:
            log.info("libABCD gateway on %s, IamABCD to %s:%d", self.legacy.address, *self.legacy.beacon_target)
            if spec.legacy.insecure:
                log.warning("INSECURE: the libABCD gateway on %s has no encryption and no keys (server.legacy.insecure "
                            "is set): anybody who reaches it can register under any name", self.legacy.address)
        if spec.insecure and spec.curve is None:
            log.warning("INSECURE: the bus has no keys (server.insecure is set): anybody who reaches %s or %s can "
                        "register under any name and command any program", self.router_address, self.events_address)
        self.publish_event("server_started", instance=self.instance, pid=os.getpid(),
                           router=self.router_address, events=self.events_address)

    def leave(self, signum):
        """Say that the server stops (for `signum`, or an error when None), while its sockets are still open."""
        reason = signal.Signals(signum).name if signum else "error"
        log.info("server %s stopping (%s)", self.instance, reason)
        self.publish_event("server_stopping", instance=self.instance, reason=reason)

    def close(self):
        """The beacon closed; the pid file removed if it still names this process."""
        self.beacon.close()
        pidfile.remove(self.pidfile)
