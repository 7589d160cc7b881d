"""A client's hold on its server: find it, keep one connection to it, register over it, notice its loss.

Owns, for `Client`: the server's address (fixed, or from beacons), the Link and
its monitor, hellos and their retries, the silence check (a server silent for
its timeout is lost), the beacon checks before moving to an announced server,
the way back after a loss (the known address tried again at once, a hello as
soon as it connects; or where a beacon says), and sending what the core hands
out on the link. Its deadlines are on the
client's timers. Must not wait for what comes: the driver's loop waits and
hands it what the sockets brought (a send may wait briefly for room, as
`Link.send_waiting` says).
"""

import logging
import time

from runcontrol import discovery, protocol
from runcontrol.client.link import FIRST_RETRY_S, Link
from runcontrol.client.probe import GIVE_UP_S, VERIFY_S
from runcontrol.errors import RequestFailed, ServerUnavailable

log = logging.getLogger("runcontrol.client.client")

HELLO_RETRY_S = 1.0
LATE_S = 0.01   # a check runs this much after its deadline, so the deadline has passed when it looks


class ServerConnection:
    """Mixin of Client (which sets the attributes named in its __init__)."""

    @property
    def router(self):
        """The router address of the server this client uses (None before one is found)."""
        return self._link.router if self._link is not None else None

    # --- sending --------------------------------------------------------------------------

    def _send_out(self):
        """Send what the core hands out: pongs, hellos and goodbyes at once or never; the rest in order, waiting
        briefly under back-pressure, and what the connection does not take waits again in the outbox."""
        urgent = self.core.urgent_to_send()
        if self._link is not None:
            for data in urgent:
                self._link.send_now(data)
        if self.core.registered and time.monotonic() - self._last_heard > self.core.timeout_s:
            self._silent()  # a dead connection: queue rather than send into it
        frames = self.core.data_to_send()
        for n, data in enumerate(frames):
            if not self._transmit(data):
                self.core.not_sent(frames[n:])
                break
        if self.wakeup is not None and (urgent or frames):
            self.wakeup()  # a send may have taken the edge of a ZeroMQ descriptor an event loop waits on

    def _transmit(self, data):
        if self._link is None or not self.core.registered:
            return False
        if self._link.send_now(data):
            return True
        self._on_monitor()  # a closed connection also says Again: learn of it before waiting
        return self.core.registered and self._link is not None and self._link.send_waiting(data)

    # --- registering ------------------------------------------------------------------------

    def _hello(self):
        if self._link is None:
            return
        self.core.hello()
        self._hello_in(HELLO_RETRY_S)  # not connected yet: the monitor or this retry says it again
        self._send_out()

    def _hello_in(self, delay_s):
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self._hello_timer = self.timers.after(delay_s, self._hello_due)

    def _hello_due(self):
        self._hello_timer = None
        if not self.core.registered:
            self._hello()

    def _on_registered(self, welcome, was_registered):
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._beacon_instance = self.core.instance
        self._watch_silence()
        if welcome.events:
            host = self.router.split("://", 1)[-1].rsplit(":", 1)[0]
            events = protocol.resolve_wildcard(welcome.events, host)
            self.events_address = events
            if self._stream is not None:
                self._stream.connect(events)
        log.info("registered as %s with server %s at %s", self.name, self.core.instance, self.router)

    def _on_refused(self, error):
        self._hello_error = error
        self._hello_in(HELLO_RETRY_S)

    def _unregister(self):
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        self.core.unregister()

    # --- silence ----------------------------------------------------------------------------------

    def _watch_silence(self):
        if self._silence is not None:
            self._silence.cancel()
        self._silence = self.timers.at(self._last_heard + self.core.timeout_s + LATE_S, self._check_silence)

    def _check_silence(self):
        self._silence = None
        if not self.core.registered:
            return
        if time.monotonic() - self._last_heard > self.core.timeout_s:
            self._silent()
        else:
            self._watch_silence()

    def _silent(self):
        log.warning("server silent for %.1f s: looking for it again", time.monotonic() - self._last_heard)
        self._unregister()
        self._beacon_instance = None
        if self._server_fixed:
            self._hello_in(0)
        else:
            self._close_link()

    # --- the connection ---------------------------------------------------------------------------

    def _listen(self, port, address):
        try:
            listener = discovery.BeaconListener(port, address, self.experiment)
        except OSError as exc:
            if not self._server_fixed:
                raise ServerUnavailable(f"cannot listen for beacons on {address}:{port}: {exc}") from None
            log.warning("not listening for beacons on %s:%s: %s", address, port, exc)
            return None
        self._poller.register(listener.fileno())
        return listener

    def _where(self):
        if self._server_fixed:
            return f"at {self._server_fixed}"
        if self._link is not None:
            return f"at {self._link.router}"
        target = self._beacons.sock.getsockname() if self._beacons else ("?", "?")
        which = f"of experiment {self.experiment!r}" if self.experiment else "of any experiment"
        return f"no beacon {which} heard on {target[0]}:{target[1]}"

    def _open(self, router):
        self._close_link()
        self._link = Link(self._ctx, router, self._curve)
        self._poller.register(self._link.sock)
        self._poller.register(self._link.monitor)
        self._hello()

    def _close_link(self):
        self._unregister()
        if self._link is None:
            return
        self._poller.unregister(self._link.sock)
        self._poller.unregister(self._link.monitor)
        self._link.close()
        self._link = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def _on_monitor(self):
        for change in self._link.changes() if self._link is not None else ():
            if change == "disconnected":
                log.info("connection to %s closed", self._link.router)
                self._unregister()
                self._hello_in(HELLO_RETRY_S)
                self._follow_checked_beacon()
            elif change == "connected":
                if not self.core.registered:
                    self._hello()
            else:
                log.error("the server at %s %s", self._link.router, change)
                self._hello_error = RequestFailed(f"the server at {self._link.router} {change}", protocol.NOT_ALLOWED)

    # --- beacons ----------------------------------------------------------------------------------

    def _on_beacon(self, beacon):
        if beacon.instance == self._beacon_instance or (self.core.registered and beacon.instance == self.instance):
            return
        if self._server_fixed and beacon.router != self._server_fixed:
            return
        self._on_monitor()  # the connection's latest word first: a loss it reports makes this beacon the way back
        if self.core.registered and beacon.router != self.router:
            if self._checks.check(beacon, time.monotonic()):  # anybody can send one: a working connection stays
                for delay_s in (VERIFY_S, GIVE_UP_S):
                    self.timers.after(delay_s + LATE_S, self._judge)
            return
        log.info("beacon of server %s (%s) at %s", beacon.instance, beacon.experiment, beacon.router)
        self._beacon_instance = beacon.instance
        if not self._server_fixed and beacon.router != self.router:
            self._open(beacon.router)
        elif self.core.registered:
            self._hello()  # the welcome says which instance answers at this address
        elif not self._link.up and time.monotonic() - self._link.down_since > FIRST_RETRY_S:
            # Lost a while ago, and ZeroMQ's tries since have not got through (refused while nobody served here, its
            # next 20 ms or more away; or stuck): connect anew. Connected, our hello is on its way; lost just now,
            # ZeroMQ's first try (10 to 20 ms after the loss) is still to come and finds the server.
            self._open(self._link.router)

    def _follow_checked_beacon(self):
        """Our connection lost while a beacon of another server was being checked (it was heard before the loss was):
        that beacon is the way back now, as it would be had it come after."""
        probe = self._checks.probe
        if probe is not None:
            self._checks.close()
            log.info("server %s at %s is gone: following the beacon of server %s at %s", self.core.instance,
                     self.router, probe.beacon.instance, probe.beacon.router)
            self.timers.after(0, lambda: self._on_beacon(probe.beacon))

    def _ping_ours(self):
        """The beacon checks' ping of our own server: its answer is worth judging on at once."""
        return self.start({"cmd": "_ping"}, on_answer=lambda answer: self.timers.after(0, self._judge))

    def _judge(self):
        moved_to = self._checks.judge(time.monotonic())
        if moved_to is not None:
            log.info("server %s at %s answers and ours at %s does not: moving to it", moved_to.instance,
                     moved_to.router, self.router)
            self._beacon_instance = moved_to.instance
            self._open(moved_to.router)
