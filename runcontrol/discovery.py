"""The UDP discovery beacon: the server sends it, clients listen for it.

Carries only where the server is (see PROTOCOL.md, "Discovery beacon"); never
commands. Listeners share the port with SO_REUSEADDR and SO_REUSEPORT so every
client on a host hears every beacon.
"""

import logging
import select
import socket
import time

from runcontrol import protocol
from runcontrol.errors import ProtocolError

log = logging.getLogger(__name__)


class BeaconSender:
    """Sends one beacon datagram to the configured address each time `send` is called."""

    def __init__(self, address, port, payload):
        self.target = (address, port)
        self.payload = payload
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setblocking(False)
        self._warned = False

    def send(self):
        try:
            self.sock.sendto(self.payload, self.target)
            self._warned = False
        except OSError as exc:
            if not self._warned:
                log.warning("beacon to %s:%s failed: %s", *self.target, exc)
                self._warned = True

    def close(self):
        self.sock.close()


class BeaconListener:
    """Receives beacons; keeps those of one experiment (or of any, when none is given)."""

    def __init__(self, port=protocol.DEFAULT_BEACON_PORT, address=protocol.DEFAULT_BEACON_ADDRESS,
                 experiment=None):
        self.experiment = experiment
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((address, port))
        self.sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """Every beacon waiting on the socket that matches, oldest first; never blocks."""
        found = []
        while True:
            try:
                data, (host, _port) = self.sock.recvfrom(protocol.MAX_BEACON_BYTES + 1)
            except BlockingIOError:
                return found
            except OSError as exc:
                log.warning("beacon socket error: %s", exc)
                return found
            beacon = self._accept(data, host)
            if beacon is not None:
                found.append(beacon)

    def _accept(self, data, host):
        try:
            beacon = protocol.parse_beacon(data)
        except ProtocolError as exc:
            log.debug("ignored datagram from %s: %s", host, exc)
            return None
        if self.experiment is not None and beacon.experiment != self.experiment:
            return None
        return beacon.with_source(host)

    def wait(self, timeout_s):
        """The first matching beacon within `timeout_s` seconds, or None."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.read()
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            select.select([self.sock], [], [], remaining)

    def close(self):
        self.sock.close()
