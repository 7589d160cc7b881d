"""The bridge's Channel Access server: the board's process variables, served by caproto's asyncio server.

Owns the Channel Access side of serving: the environment caproto reads (`ca_environment`, from the experiment's
`epics` section: interfaces, ports, beacons, the client's address list), one caproto channel per process variable
(read-only, unless the board made it writable: then a put goes to `put(served, value, who)`, an async callable
that raises `PutRefused` to fail the put with the reason the client sees), applying what the board says changed
in order (monitors are told of each change of value, units or alarm; otherwise only the time moves), and hearing
searches broadcast on loopback (127.255.255.255) as well as those sent to the interface, as EPICS's own servers
do. Must not touch the bus: the program (clients/epics.py) does.
"""

import asyncio
import contextvars
import logging
import socket

from caproto import (AccessRights, AlarmSeverity, AlarmStatus, ChannelAlarm, ChannelDouble, ChannelEnum,
                     ChannelInteger, ChannelString)
from caproto.asyncio.server import Context

log = logging.getLogger("clients.epics")

LOOPBACK_BROADCAST = "127.255.255.255"
SEVERITY = {"NO_ALARM": AlarmSeverity.NO_ALARM, "MINOR": AlarmSeverity.MINOR_ALARM,
            "MAJOR": AlarmSeverity.MAJOR_ALARM, "INVALID": AlarmSeverity.INVALID_ALARM}
WHO = contextvars.ContextVar("who", default=("?", "?"))   # (host, user) of the put being handled


class PutRefused(Exception):
    """A put the bus refused: its text is what the Channel Access client sees."""


def ca_environment(epics):
    """The EPICS_* variables caproto reads, from an experiments.EpicsSpec: nothing but what the experiment says
    is searched or listened on, and no repeater is relied on."""
    hosts = sorted({address.split(":")[0] for address in epics.addresses})
    return {"EPICS_CA_ADDR_LIST": " ".join(epics.addresses), "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_SERVER_PORT": str(epics.server_port), "EPICS_CAS_SERVER_PORT": str(epics.server_port),
            "EPICS_CAS_INTF_ADDR_LIST": " ".join(epics.interfaces),
            "EPICS_CAS_BEACON_ADDR_LIST": " ".join(hosts), "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_CAS_BEACON_PORT": str(epics.repeater_port), "EPICS_CA_REPEATER_PORT": str(epics.repeater_port)}


class ReadOnly:
    """Nobody may write: Channel Access clients are told so when they connect."""

    def check_access(self, hostname, username):
        return AccessRights.READ

    async def auth_write(self, hostname, username, *args, **kwargs):
        log.warning("put to %s by %s@%s refused: not writable", getattr(self, "pv", "?"), username, hostname)
        return await super().auth_write(hostname, username, *args, **kwargs)


class Writable:
    """A setting: a put is handed to `self.put` with who asked (Channel Access's host and user names), and served
    only once the bus accepted it."""

    put = None      # async (served, value, who)
    served = None   # the board's Served

    def check_access(self, hostname, username):
        return AccessRights.READ | AccessRights.WRITE

    async def auth_write(self, hostname, username, *args, **kwargs):
        token = WHO.set((hostname, username))
        try:
            return await super().auth_write(hostname, username, *args, **kwargs)
        finally:
            WHO.reset(token)

    async def write(self, value, *, verify_value=True, **kwargs):
        if verify_value:   # a put (the board's own updates come without verifying)
            value = self.preprocess_value(value)
            await self.put(self.served, value, WHO.get())
        return await super().write(value, verify_value=False, **kwargs)


KINDS = {"double": ChannelDouble, "integer": ChannelInteger, "enum": ChannelEnum, "string": ChannelString}
CLASSES = {(kind, writable): type(f"{'Writable' if writable else 'ReadOnly'}{base.__name__}",
                                  (Writable if writable else ReadOnly, base), {})
           for kind, base in KINDS.items() for writable in (False, True)}


def make_channel(served, put):
    """A caproto channel serving `served` as it stands."""
    fields = {"value": served.value, "timestamp": served.ts,
              "alarm": ChannelAlarm(status=AlarmStatus[served.status], severity=SEVERITY[served.severity])}
    if served.kind in ("double", "integer"):
        fields["units"] = served.units
        if served.limits is not None:
            low, high = served.limits
            fields.update(lower_ctrl_limit=low, upper_ctrl_limit=high, lower_disp_limit=low, upper_disp_limit=high)
    if served.kind == "enum":
        fields["enum_strings"] = served.choices
    channel = CLASSES[served.kind, served.writable](**fields)
    channel.pv, channel.served, channel.kind, channel.choices = served.pv, served, served.kind, served.choices
    if served.writable:
        channel.put = put
    return channel


class Server:
    """caproto's asyncio server over the board: `poke()` after the board changed; `run(stop)` serves."""

    def __init__(self, board, put, interfaces):
        self.board, self.put = board, put
        self.pvdb = {}            # process variable name -> channel: caproto looks names up here at each search
        self.channels = {}        # Orbit name -> channel
        self.context = Context(self.pvdb, list(interfaces))
        self.changed = asyncio.Event()
        self._hearing = []

    def poke(self):
        self.changed.set()

    async def run(self, stop):
        served = asyncio.ensure_future(self.context.run(startup_hook=self._hear_broadcasts))
        try:
            while not stop.is_set():
                await self.apply()
                waits = [asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(stop.wait())]
                done, pending = await asyncio.wait([served, *waits], return_when=asyncio.FIRST_COMPLETED)
                for task in pending - {served}:
                    task.cancel()
                if served in done:
                    served.result()   # the server failed: raise its error
                    return
        finally:
            served.cancel()
            await asyncio.gather(served, return_exceptions=True)
            for transport in self._hearing:
                transport.close()

    async def apply(self):
        """Serve what the board says changed."""
        self.changed.clear()
        for name in self.board.unservable:
            log.warning("%s cannot be served: not a process variable name, or not a setting of a simple type", name)
        self.board.unservable.clear()
        added = 0
        for served, news in self.board.take_changes():
            channel = self.channels.get(served.name)
            if channel is None or (channel.kind, channel.choices) != (served.kind, served.choices):
                channel = self.channels[served.name] = self.pvdb[served.pv] = make_channel(served, self.put)
                channel.meta = (served.severity, served.status, served.units)
                added += 1
            elif news:
                meta = (served.severity, served.status, served.units)
                if meta == channel.meta:   # the value alone: caproto's metadata write was a quarter of its cost
                    await channel.write(served.value, verify_value=False, timestamp=served.ts)
                    continue
                channel.meta = meta
                metadata = {"units": served.units} if served.kind in ("double", "integer") else {}
                await channel.write(served.value, verify_value=False, timestamp=served.ts,
                                    severity=SEVERITY[served.severity], status=AlarmStatus[served.status],
                                    **metadata)
            else:
                await channel.write_metadata(publish=False, timestamp=served.ts)
        if added:
            log.info("serving %d process variables (%d new)", len(self.pvdb), added)

    async def _hear_broadcasts(self, async_lib):
        """A loopback interface also hears searches broadcast to 127.255.255.255 (a socket bound to 127.0.0.1 does
        not): they go into the server's queue of searches, and its answers leave from the interface's socket."""
        loop = asyncio.get_running_loop()
        for interface in self.context.interfaces:
            if not interface.startswith("127."):
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((LOOPBACK_BROADCAST, self.context.ca_server_port))
            queue = self.context.broadcaster_datagram_queue
            transport, _ = await loop.create_datagram_endpoint(lambda: Searches(queue, interface), sock=sock)
            self._hearing.append(transport)


class Searches(asyncio.DatagramProtocol):
    """Datagrams to the broadcast address, handed to the server's queue as if its interface's socket got them."""

    def __init__(self, queue, interface):
        self.queue, self.interface = queue, interface

    def datagram_received(self, data, addr):
        if data:
            self.queue.put((self.interface, data, addr))
