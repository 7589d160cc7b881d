"""A simulated skipper-CCD readout board (an LTA) and the link to it.

  python -m clients.sim.lta --name lta1 [--drop-rate 0.01] [--bad-rate 0.02]

During a run (between `begin` and `end`) the board takes exposures one after
the other: each integrates `seconds`, then is read out row by row over the
board's link and written (`.raw`, little-endian uint16, with its metadata in
`.json`) under `<paths.data>/<name>/run_<NNNNNN>/`; the run parameters
`seconds`, `rows`, `cols` set the exposures. The simulated link sometimes drops:
the board is reconnected by a bounded retry loop and the readout goes on (after
too many failed tries the exposure is dropped and the next one starts); a row of
invalid data is read again (resynchronised), never fatal. Commands: `status`,
`monitor`.
"""

import array
import json
import random
import time

from clients.instrument import Instrument, data_folder, run
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
    def __init__(self, seconds, rows, cols, started):
        self.seconds, self.rows, self.cols = seconds, rows, cols
        self.started = started
        self.image = array.array("H")
        self.tries = 0
        self.retry_at = 0.0


class Lta(Instrument):
    def __init__(self, name, folder, drop_rate=0.01, bad_rate=0.02, seed=None, **kwargs):
        super().__init__(name, **kwargs)
        self.board = Board(drop_rate, bad_rate, random.Random(seed))
        self.folder = folder
        self.run_folder = None
        self.shape = (1.0, 64, 64)
        self.in_run = 0
        self.exposure = None
        self.counts = {"exposures": 0, "link_drops": 0, "reconnects": 0, "resyncs": 0, "failed": 0}

    def values(self):
        return {"link": "up" if self.board.connected else "down", "exposing": self.exposure is not None,
                "run": self.run_number if self.run_folder else None, **self.counts}

    def on_prepare(self, run):
        self.settings(run.params)  # refuse bad parameters before the run begins
        return {"link": "up" if self.board.connected or self.board.connect() else "down"}

    def on_begin(self, run):
        self.shape = self.settings(run.params)
        self.run_folder = self.folder / f"run_{run.number:06d}"
        self.run_folder.mkdir(parents=True, exist_ok=True)
        self.in_run = 0
        self._next_exposure()
        self.log.info("run %s: exposures of %g s, %d x %d into %s", run.number, *self.shape, self.run_folder)
        self.publish_values()
        return {"folder": str(self.run_folder)}

    def on_end(self, run):
        if self.exposure is not None:
            self.log.info("run %s ends: the exposure in progress is dropped", run.number)
        self.exposure = None
        self.run_folder = None
        self.publish_values()
        return {"exposures": self.in_run}

    @staticmethod
    def settings(params):
        seconds, rows, cols = params.get("seconds", 1.0), params.get("rows", 64), params.get("cols", 64)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise Refused(f"'seconds' must be a number from 0 to 3600, not {seconds!r}", "bad_field")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (rows, cols)) or rows * cols > MAX_PIXELS:
            raise Refused(f"'rows' and 'cols' must be whole numbers with 1 to {MAX_PIXELS} pixels", "bad_field")
        return float(seconds), rows, cols

    def _next_exposure(self):
        self.exposure = Exposure(*self.shape, time.monotonic())

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
            self.log.error("link down after %d tries: exposure dropped, starting the next one", exposure.tries)
            self._next_exposure()
        else:
            exposure.retry_at = time.monotonic() + RECONNECT_DELAY_S * exposure.tries
        self.publish_values()

    def _finish(self, exposure):
        self.counts["exposures"] += 1
        self.in_run += 1
        stem = self.run_folder / f"{self.name}_{self.in_run:06d}"
        raw, meta = stem.with_suffix(".raw"), stem.with_suffix(".json")
        raw.write_bytes(exposure.image.tobytes())
        metadata = {"board": self.name, "run": self.run_number, "exposure": self.in_run, "rows": exposure.rows,
                    "cols": exposure.cols, "seconds": exposure.seconds, "dtype": "uint16-le",
                    "written": time.time(), "resyncs": self.counts["resyncs"]}
        meta.write_text(json.dumps(metadata, indent=1), encoding="utf-8")
        self.log.info("wrote %s", raw)
        self._next_exposure()
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
