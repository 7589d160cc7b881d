"""A simulated vacuum gauge on the cryostat: pumps down towards its base pressure, or is vented.

  python -m clients.sim.vacuum --name vacuum [--start 1000] [--base 1e-6]

Commands: `pump`, `vent`, `status`, `monitor`. Publishes `pub.<name>.values`
{"pressure", "pumping", "unit"} with retain.
"""

import math

from clients.instrument import Instrument, serve_instrument

VENTED_MBAR = 1000.0
PUMP_DECADES_PER_S = 1.0


class Vacuum(Instrument):
    def __init__(self, name, start_mbar=VENTED_MBAR, base_mbar=1e-6, **kwargs):
        super().__init__(name, **kwargs)
        self.pressure = start_mbar
        self.base = base_mbar
        self.pumping = True

    def values(self):
        return {"pressure": float(f"{self.pressure:.3g}"), "pumping": self.pumping, "unit": "mbar"}

    def tick(self, dt):
        if self.pumping:
            self.pressure = max(self.base, self.pressure * math.pow(10, -PUMP_DECADES_PER_S * dt))

    def cmd_pump(self, msg):
        """Start pumping down."""
        self.pumping = True
        self.publish_values()
        return self.values()

    def cmd_vent(self, msg):
        """Stop pumping and let air in."""
        self.pumping = False
        self.pressure = VENTED_MBAR
        self.log.warning("vented")
        self.publish_values()
        return self.values()


def main(argv=None):
    def options(parser):
        parser.add_argument("--start", type=float, default=VENTED_MBAR, help="pressure at start, mbar")
        parser.add_argument("--base", type=float, default=1e-6, help="base pressure, mbar")
    return serve_instrument(lambda a: Vacuum(a.name, a.start, a.base, period_s=a.period, experiment=a.experiment,
                                server=a.server), __doc__.split("\n")[0], options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
