"""The historian: records every number clients publish, and answers `history`.

  python -m clients.historian --name historian [--experiment FILE]

Subscribes to `pub.` on the event stream and records each number inside each
published object (`cryo.values.temperature`) with its timestamp in
`<paths.state>/history.sqlite` (`clients.historystore`), written once a second
in one transaction; fine values are kept `history.retention_days` (30), minute
buckets ten times longer. When it (re)starts it takes the retained values the
server holds that are newer than what it has, so a restart loses only what
changed more than once meanwhile; what it never saw stays a gap.

`history`: `name` (or `names`, a list; prefixes), `since` and `until` (seconds
since the epoch, or negative: that long ago; default the last hour up to now),
`points` (at most, default 500) -> {name: [[ts, min, max, mean], ...]}. A
program of its own, so a slow disk never touches the server.
"""

import argparse
import logging
import os
import signal
import sqlite3
import sys
import time

import experiments
from clients.client import Client
from clients.historystore import Store
from runcontrol import logsetup, protocol
from runcontrol.errors import ConfigError, Refused, ServerUnavailable

log = logging.getLogger("clients.historian")

FLUSH_EVERY_S = 1.0
EXPIRE_EVERY_S = 3600.0
MAX_POINTS = 10000


class Historian(Client):
    def __init__(self, name, store, **kwargs):
        super().__init__(name, meta={"role": "historian"}, **kwargs)
        self.store = store
        self.recorded = 0
        self.subscribe("pub.", self._on_published)

    def _on_published(self, topic, event):
        if not isinstance(event, dict):
            return
        ts = event.get("ts")
        ts = ts if isinstance(ts, (int, float)) else time.time()
        for name, value in protocol.published_numbers(topic[len("pub."):], event.get("data"), []):
            self.store.add(name, ts, value)

    def catch_up(self):
        """Take the retained values newer than the last recorded of each name (after a restart)."""
        pending = self.start({"cmd": "_retained"})
        answer = self.wait(pending, 10)
        if not answer.ok or not isinstance(answer.result, dict):
            return 0
        taken = 0
        for key, held in answer.result.items():
            if not isinstance(held, dict) or not isinstance(held.get("ts"), (int, float)):
                continue
            for name, value in protocol.published_numbers(key, held.get("data"), []):
                last = self.store.last(name)
                if last is None or held["ts"] > last:
                    self.store.add(name, held["ts"], value)
                    taken += 1
        return taken

    def cmd_history(self, msg):
        """Values of `name` (or `names`: prefixes) between `since` and `until` (negative: seconds ago), at most
        `points` buckets each: {name: [[ts, min, max, mean], ...]}."""
        names = msg.get("names", msg.get("name"))
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise Refused("history needs 'name' (a string) or 'names' (a list of prefixes)", protocol.BAD_FIELD)
        now = time.time()
        since, until = when(msg.get("since", -3600), now, "since"), when(msg.get("until", now), now, "until")
        points = msg.get("points", 500)
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
            raise Refused(f"'points' must be an integer from 1 to {MAX_POINTS}", protocol.BAD_FIELD)
        if until <= since:
            raise Refused(f"'until' ({until}) must come after 'since' ({since})", protocol.BAD_FIELD)
        self.flush()
        return self.store.query(names, since, until, points)

    def cmd_status(self, msg):
        """How many values were recorded, and how many names."""
        return {"recorded": self.recorded, "names": len(self.store.ids)}

    def flush(self):
        self.recorded += self.store.flush()


def when(value, now, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"'{field}' must be seconds since the epoch, or negative: seconds ago", protocol.BAD_FIELD)
    return now + value if value < 0 else float(value)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.historian", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="historian")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    parser.add_argument("--db", help="the SQLite file (default: <paths.state>/history.sqlite)")
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        spec = experiments.load(args.experiment) if args.experiment else None
        path = args.db or (spec.paths.state / "history.sqlite" if spec else "history.sqlite")
        store = Store(path, spec.history.retention_days if spec else 30.0)
    except (ConfigError, OSError, sqlite3.Error) as exc:
        print(f"historian: cannot open the history {path if 'path' in locals() else ''}: {exc}", file=sys.stderr)
        return 2
    try:
        with Historian(args.name, store, experiment=args.experiment) as historian:
            historian.connect(60)
            log.info("took %d retained values newer than the history", historian.catch_up())
            flushed = expired = time.monotonic()
            while True:
                historian.poll(max(0.0, flushed + FLUSH_EVERY_S - time.monotonic()))
                now = time.monotonic()
                if now - flushed >= FLUSH_EVERY_S:
                    historian.flush()
                    flushed = now
                if now - expired >= EXPIRE_EVERY_S:
                    store.expire()
                    expired = now
    except ServerUnavailable as exc:
        print(f"historian: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
