"""A simulated cryocooler temperature controller: the CCDs' temperature follows a set point.

  python -m clients.sim.cryo --name cryo [--start 295] [--rate 5]

Commands: `set_point` (`kelvin`, between 100 and 300 K), `status`, `monitor`.
Settings (`set_config`, both live): `set_point` (K) and `rate` (K/s); the command's
set point lasts until the next settings arrive (a restart brings the setting back).
Publishes `pub.<name>.values` {"temperature", "set_point", "unit"} with retain.
"""

import random

from runcontrol.client.core import required
from clients.instrument import Instrument, serve_instrument
from runcontrol.errors import Refused

MIN_SET_POINT_K = 100.0
MAX_SET_POINT_K = 300.0


class Cryo(Instrument):
    config_schema = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "set_point": {"type": "number", "minimum": MIN_SET_POINT_K, "maximum": MAX_SET_POINT_K, "default": 140.0,
                          "live": True, "description": "temperature the CCDs are brought to, K"},
            "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "default": 5.0, "live": True,
                     "description": "how fast the temperature follows the set point, K/s"},
        },
    }

    def __init__(self, name, start_k=295.0, set_point_k=140.0, rate_k_per_s=5.0, **kwargs):
        super().__init__(name, **kwargs)
        self.temperature = start_k
        self.set_point = set_point_k
        self.rate = rate_k_per_s

    def values(self):
        return {"temperature": round(self.temperature, 2), "set_point": self.set_point, "unit": "K"}

    def tick(self, dt):
        step = max(-self.rate * dt, min(self.rate * dt, self.set_point - self.temperature))
        self.temperature += step + random.gauss(0.0, 0.02)

    def on_config(self, new, old):
        self.set_point, self.rate = float(new["set_point"]), float(new["rate"])
        self.log.info("settings: set point %.1f K, rate %g K/s", self.set_point, self.rate)
        self.publish_values()

    def cmd_set_point(self, msg):
        """Set the temperature to reach (`kelvin`, 100 to 300)."""
        kelvin = required(msg, "kelvin")
        if isinstance(kelvin, bool) or not isinstance(kelvin, (int, float)):
            raise Refused(f"'kelvin' must be a number, not {kelvin!r}", "bad_field")
        if not MIN_SET_POINT_K <= kelvin <= MAX_SET_POINT_K:
            raise Refused(f"set point {kelvin} K is outside {MIN_SET_POINT_K:g} to {MAX_SET_POINT_K:g} K",
                          "out_of_range")
        self.set_point = float(kelvin)
        self.log.info("set point now %.1f K", self.set_point)
        self.publish_values()
        return self.values()


def main(argv=None):
    def options(parser):
        parser.add_argument("--start", type=float, default=295.0, help="temperature at start, K")
        parser.add_argument("--set-point", type=float, default=140.0, help="initial set point, K")
        parser.add_argument("--rate", type=float, default=5.0, help="cooling or warming rate, K/s")
    return serve_instrument(lambda a: Cryo(a.name, a.start, a.set_point, a.rate, period_s=a.period,
                                           experiment=a.experiment, server=a.server),
                            __doc__.split("\n")[0], options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
