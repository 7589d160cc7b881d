"""A simulated skipper-CCD readout board (an LTA) and the link to it.

  python -m clients.sim.lta --name lta1 [--drop-rate 0.01] [--bad-rate 0.02]

`expose` (`seconds`, `rows`, `cols`) integrates, then reads the CCD out row by
row over the board's link, and writes the image (`.raw`, little-endian uint16)
with its metadata (`.json`) under `<paths.data>/<name>/`. The simulated link
sometimes drops: the board is reconnected by a bounded retry loop and the
readout goes on; a row of invalid data is read again (resynchronised), never
fatal. Commands: `expose`, `status`, `monitor`.
"""

import array
import json
import random
import time

from clients.sim.instrument import Instrument, data_folder, run
from runcontrol.errors import Refused

RECONNECT_TRIES = 5
RECONNECT_DELAY_S = 0.2
ROWS_PER_TICK = 16
MAX_PIXELS = 4096 * 4096


class LinkDropped(Exception):
    pass


class BadData(Exception):
    pass


class Board:
    """The simulated hardware: a link that may drop, rows that may come back garbled."""

    def __init__(self, drop_rate, bad_rate, rng):
        self.drop_rate, self.bad_rate, self.rng = drop_rate, bad_rate, rng
        self.connected = True

    def connect(self):
        self.connected = self.rng.random() > 0.3  # a reconnect does not always succeed at once
        return self.connected

    def read_row(self, cols, row):
        if not self.connected:
            raise LinkDropped("link is down")
        if self.rng.random() < self.drop_rate:
            self.connected = False
            raise LinkDropped("link dropped during readout")
        if self.rng.random() < self.bad_rate:
            raise BadData(f"row {row}: bad frame marker")
        return array.array("H", (1000 + int(self.rng.gauss(0, 5)) for _ in range(cols)))


class Exposure:
    def __init__(self, reply, seconds, rows, cols, started):
        self.reply, self.seconds, self.rows, self.cols = reply, seconds, rows, cols
        self.started = started
        self.image = array.array("H")
        self.tries = 0
        self.retry_at = 0.0


class Lta(Instrument):
    def __init__(self, name, folder, drop_rate=0.01, bad_rate=0.02, seed=None, **kwargs):
        super().__init__(name, **kwargs)
        self.board = Board(drop_rate, bad_rate, random.Random(seed))
        self.folder = folder
        self.exposure = None
        self.counts = {"exposures": 0, "link_drops": 0, "reconnects": 0, "resyncs": 0, "failed": 0}

    def values(self):
        return {"link": "up" if self.board.connected else "down", "exposing": self.exposure is not None,
                **self.counts}

    def cmd_expose(self, msg):
        """Take an exposure (`seconds`, `rows`, `cols`) and write it; answers with the file names."""
        if self.exposure is not None:
            raise Refused("an exposure is already in progress", "busy")
        seconds, rows, cols = msg.get("seconds", 1.0), msg.get("rows", 64), msg.get("cols", 64)
        for field, value in (("seconds", seconds), ("rows", rows), ("cols", cols)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise Refused(f"{field!r} must be a number >= 0, not {value!r}", "bad_field")
        if not isinstance(rows, int) or not isinstance(cols, int) or rows * cols > MAX_PIXELS or not rows or not cols:
            raise Refused(f"rows and cols must be whole numbers with 1 to {MAX_PIXELS} pixels", "bad_field")
        self.exposure = Exposure(self.defer(msg), float(seconds), rows, cols, time.monotonic())
        self.log.info("exposing %g s, %d x %d", seconds, rows, cols)
        return self.exposure.reply

    def tick(self, dt):
        exposure = self.exposure
        now = time.monotonic()
        if exposure is None or now < exposure.started + exposure.seconds or now < exposure.retry_at:
            return
        try:
            for _ in range(ROWS_PER_TICK):
                row = len(exposure.image) // exposure.cols
                if row >= exposure.rows:
                    self._finish(exposure)
                    return
                self._read_row(exposure, row)
        except LinkDropped as exc:
            self._reconnect(exposure, str(exc))

    def _read_row(self, exposure, row):
        try:
            exposure.image.extend(self.board.read_row(exposure.cols, row))
        except BadData as exc:
            self.counts["resyncs"] += 1
            self.log.warning("invalid data (%s): resynchronising, reading the row again", exc)

    def _reconnect(self, exposure, why):
        if exposure.tries == 0:
            self.counts["link_drops"] += 1
            self.log.warning("%s: reconnecting (at most %d tries)", why, RECONNECT_TRIES)
        exposure.tries += 1
        if self.board.connect():
            self.counts["reconnects"] += 1
            self.log.info("link back after %d tries: readout goes on", exposure.tries)
            exposure.tries = 0
        elif exposure.tries >= RECONNECT_TRIES:
            self.counts["failed"] += 1
            self.exposure = None
            self.log.error("link down after %d tries: exposure abandoned", exposure.tries)
            exposure.reply.refuse(f"link to the board down after {RECONNECT_TRIES} tries", "link_down")
        else:
            exposure.retry_at = time.monotonic() + RECONNECT_DELAY_S * exposure.tries
        self.publish_values()

    def _finish(self, exposure):
        self.counts["exposures"] += 1
        stem = self.folder / f"{self.name}_{self.counts['exposures']:06d}_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        raw, meta = stem.with_suffix(".raw"), stem.with_suffix(".json")
        raw.write_bytes(exposure.image.tobytes())
        metadata = {"board": self.name, "rows": exposure.rows, "cols": exposure.cols, "seconds": exposure.seconds,
                    "dtype": "uint16-le", "written": time.time(), "resyncs": self.counts["resyncs"]}
        meta.write_text(json.dumps(metadata, indent=1), encoding="utf-8")
        self.exposure = None
        self.log.info("wrote %s", raw)
        exposure.reply.resolve({"image": str(raw), "metadata": str(meta), **metadata})
        self.publish_values()


def main(argv=None):
    def options(parser):
        parser.add_argument("--drop-rate", type=float, default=0.01, help="chance per row that the link drops")
        parser.add_argument("--bad-rate", type=float, default=0.02, help="chance per row of invalid data")
        parser.add_argument("--seed", type=int, help="random seed, for a repeatable simulation")
    return run(lambda a: Lta(a.name, data_folder(a.experiment, a.name), a.drop_rate, a.bad_rate, a.seed, period_s=a.period, experiment=a.experiment,
                             server=a.server), __doc__.split("\n")[0], options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
