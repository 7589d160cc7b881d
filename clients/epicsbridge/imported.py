"""What the epics program publishes of the channels it imports, decided without I/O.

Owns, for each imported channel (`epics.import`): its connection, last value, severity and units, and what goes
on the bus when. Each value is published, retained, on the topic of its `as` (so its Orbit name is
`<client>.<as>`, the name the history and alarms know): a number, a list of numbers (its first 64) or a string,
as it changes. A channel disconnected, or INVALID, is published as missing: `null`, so the retained value says
it is not known, the historian records nothing (a gap) and an alarm `missing` on it fires once its last number
is older than its limit. While connected and unchanged its value is published again every `republish` seconds,
so such an alarm stays quiet. Must not touch a socket or Channel Access, nor read a clock: times come in.
"""

from dataclasses import dataclass

LIST_MAX = 64
SEVERITIES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")


@dataclass
class Channel:
    pv: str
    name: str                  # the topic it is published on (its `as`)
    units: str = ""
    units_given: bool = False  # by the experiment: the IOC's are not taken
    connected: bool = False
    value: object = None       # the last value published, None while missing
    severity: str = "INVALID"
    published_at: object = None   # monotonic time of its last publication

    def describe(self):
        return {"pv": self.pv, "connected": self.connected, "severity": self.severity, "units": self.units,
                "value": self.value}


def plain(values):
    """A channel's value as JSON: one element as itself, more as a list (the first 64); bytes as text."""
    items = [v.decode("latin-1") if isinstance(v, bytes) else v for v in list(values)[:LIST_MAX]]
    items = [v.item() if hasattr(v, "item") else v for v in items]   # numpy scalars
    if len(items) == 1:
        return items[0]
    return items


class Imports:
    """Every imported channel, by its process variable name."""

    def __init__(self, imports, republish_s):
        self.channels = {i.pv: Channel(i.pv, i.name, i.units or "", i.units is not None) for i in imports}
        self.republish_s = republish_s

    def connection(self, pv, connected, now):
        """A channel (dis)connected: [(topic, data)] to publish (missing at once when it went)."""
        channel = self.channels[pv]
        channel.connected = connected
        if connected:
            return []
        channel.severity = "INVALID"
        return self._publish(channel, None, now)

    def took(self, pv, values, severity, now):
        """A monitor's update: its value (caproto's data) and severity (a name of SEVERITIES)."""
        channel = self.channels[pv]
        channel.severity = severity
        return self._publish(channel, None if severity == "INVALID" else plain(values), now)

    def took_units(self, pv, units):
        channel = self.channels[pv]
        if not channel.units_given and isinstance(units, str):
            channel.units = units

    def due(self, now):
        """The values to publish again now: connected, known, and not published for `republish_s`."""
        out = []
        for channel in self.channels.values():
            if channel.connected and channel.value is not None and channel.published_at is not None \
                    and now - channel.published_at >= self.republish_s:
                out += self._publish(channel, channel.value, now)
        return out

    def all_known(self, now):
        """Every value as it stands, to publish after (re)registering (a restarted server holds none)."""
        return [item for channel in self.channels.values() if channel.published_at is not None
                for item in self._publish(channel, channel.value, now)]

    def describe(self):
        return {channel.name: channel.describe() for channel in self.channels.values()}

    def _publish(self, channel, value, now):
        channel.value, channel.published_at = value, now
        return [(channel.name, value)]
