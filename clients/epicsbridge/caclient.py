"""The bridge's Channel Access client: monitors of the imported channels, with caproto's asyncio client.

Owns subscribing to each imported channel (DBR_TIME: its value and severity), reading its units once it has
connected, and telling the program of each connection, disconnection, value and units through the callables it
was given (`on_connection(pv, connected)`, `on_value(pv, values, severity)`, `on_units(pv, units)`). caproto
searches again and reconnects by itself, and its asyncio client starts no CA repeater. Callbacks run in the event
loop (caproto runs coroutine callbacks there, others in threads: these are coroutines). Must not touch the bus.
"""

import asyncio
import logging

from caproto import AlarmSeverity, CaprotoError
from caproto.asyncio.client import Context

log = logging.getLogger("clients.epics")

SEVERITY = {AlarmSeverity.NO_ALARM: "NO_ALARM", AlarmSeverity.MINOR_ALARM: "MINOR",
            AlarmSeverity.MAJOR_ALARM: "MAJOR", AlarmSeverity.INVALID_ALARM: "INVALID"}
READ_UNITS_TIMEOUT_S = 5.0


class Monitors:
    def __init__(self, names, on_connection, on_value, on_units):
        self.names = list(names)
        self.on_connection, self.on_value, self.on_units = on_connection, on_value, on_units
        self.context = None
        self.subscriptions = []   # held: caproto keeps only weak references to callbacks' owners
        self._reads = set()

    async def start(self):
        if not self.names:
            return
        self.context = Context()
        pvs = await self.context.get_pvs(*self.names, connection_state_callback=self._connection)
        for pv in pvs:
            subscription = pv.subscribe(data_type="time")
            subscription.add_callback(self._value)
            self.subscriptions.append(subscription)

    async def close(self):
        for task in self._reads:
            task.cancel()
        if self.context is not None:
            await self.context.disconnect()

    async def _connection(self, pv, state):
        connected = state == "connected"
        log.log(logging.INFO if connected else logging.WARNING, "%s %s", pv.name, state)
        self.on_connection(pv.name, connected)
        if connected:
            task = asyncio.ensure_future(self._read_units(pv))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _value(self, subscription, response):
        severity = SEVERITY.get(AlarmSeverity(response.metadata.severity), "INVALID")
        self.on_value(subscription.pv.name, response.data, severity)

    async def _read_units(self, pv):
        try:
            reading = await pv.read(data_type="control", timeout=READ_UNITS_TIMEOUT_S)
        except (CaprotoError, asyncio.TimeoutError, TimeoutError) as exc:
            log.info("%s: no units read (%s)", pv.name, exc)
            return
        units = getattr(reading.metadata, "units", b"")
        self.on_units(pv.name, units.decode("latin-1") if isinstance(units, bytes) else "")
