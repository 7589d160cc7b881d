"""A simulated CCD bias supply with an interlock on temperature and vacuum.

  python -m clients.sim.bias --name bias [--cryo cryo] [--vacuum vacuum]

`on` is refused while the CCDs are warmer than `--max-temperature` (K) or the
pressure is above `--max-pressure` (mbar), or while either is unknown; if either
goes bad while on, the supply switches itself off. It follows the retained
values the cryo controller and the vacuum gauge publish. Commands: `on`, `off`,
`status`, `monitor`. Settings: `volts` (the voltage it ramps to when on; frozen
during a run) and `ramp_rate` (V/s, live); it ramps down at the same rate when
switched off, and drops at once when the interlock trips. While it ramps it
publishes its values at every tick (each second), not only every 5 s.
"""

from clients.instrument import Instrument, serve_instrument
from runcontrol.errors import Refused


class Bias(Instrument):
    config_schema = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "volts": {"type": "number", "minimum": 0, "maximum": 70, "default": 70.0,
                      "description": "bias voltage when on, V"},
            "ramp_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "default": 10.0, "live": True,
                          "description": "how fast the voltage changes, V/s"},
        },
    }

    def __init__(self, name, cryo="cryo", vacuum="vacuum", max_temperature_k=180.0, max_pressure_mbar=1e-4,
                 **kwargs):
        super().__init__(name, **kwargs)
        self.sources = {cryo: "temperature", vacuum: "pressure"}
        self.limits = {"temperature": max_temperature_k, "pressure": max_pressure_mbar}
        self.readings = {"temperature": None, "pressure": None}
        self.output = 0.0
        self._said_output = 0.0   # the output last published
        self.on = False
        self.tripped = None
        for source in self.sources:
            self.subscribe(f"pub.{source}.values", self._on_values)

    def connect(self, timeout=10.0):
        super().connect(timeout)
        self.start({"cmd": "_retained"}, on_answer=self._on_retained)
        return self

    def _on_retained(self, answer):
        if answer.ok:
            for key, entry in answer.result.items():
                source = key.split(".", 1)[0]
                if key.endswith(".values") and source in self.sources:
                    self._take(source, entry.get("data"))

    def _on_values(self, topic, obj):
        self._take(obj.get("from"), obj.get("data"))

    def _take(self, source, data):
        quantity = self.sources.get(source)
        if quantity and isinstance(data, dict) and isinstance(data.get(quantity), (int, float)):
            self.readings[quantity] = float(data[quantity])
            problem = self.interlock()
            if self.on and problem:
                self.on, self.output = False, 0.0
                self.tripped = problem
                self.log.warning("interlock: bias switched off: %s", problem)
                self.publish_values()

    def interlock(self):
        """Why the bias may not be on now, or None."""
        for quantity, limit in self.limits.items():
            value = self.readings[quantity]
            if value is None:
                return f"{quantity} unknown (nothing heard from {self._source_of(quantity)})"
            if value > limit:
                return f"{quantity} {value:g} is above the limit {limit:g}"
        return None

    def _source_of(self, quantity):
        return next(s for s, q in self.sources.items() if q == quantity)

    def publish_values(self):
        super().publish_values()
        self._said_output = self.output

    def values(self):
        return {"on": self.on, "volts": round(self.output, 3), "set_volts": self.config["volts"],
                "interlock": self.interlock(), "tripped": self.tripped, **self.readings}

    def tick(self, dt):
        target = self.config["volts"] if self.on else 0.0
        step = self.config["ramp_rate"] * dt
        before = self.output
        self.output = min(target, self.output + step) if target >= self.output else max(target, self.output - step)
        if self.output != before or before != self._said_output:   # a ramp is told each tick, and where it ends
            self.publish_values()

    def cmd_on(self, msg):
        """Switch the bias on (refused while the CCDs are warm or the vacuum is poor)."""
        problem = self.interlock()
        if problem:
            raise Refused(f"bias stays off: {problem}", "interlock")
        self.on, self.tripped = True, None
        self.log.info("bias on, ramping to %g V at %g V/s", self.config["volts"], self.config["ramp_rate"])
        self.publish_values()
        return self.values()

    def cmd_off(self, msg):
        """Switch the bias off."""
        self.on = False
        self.publish_values()
        return self.values()


def main(argv=None):
    def options(parser):
        parser.add_argument("--cryo", default="cryo", help="name of the temperature controller")
        parser.add_argument("--vacuum", default="vacuum", help="name of the vacuum gauge")
        parser.add_argument("--max-temperature", type=float, default=180.0, help="K")
        parser.add_argument("--max-pressure", type=float, default=1e-4, help="mbar")
    return serve_instrument(lambda a: Bias(a.name, a.cryo, a.vacuum, a.max_temperature, a.max_pressure,
                                           period_s=a.period, experiment=a.experiment, server=a.server),
                            __doc__.split("\n")[0], options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
