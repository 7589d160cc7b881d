"""The historian: records every number clients publish, and answers `history`.

  python -m clients.historian --name historian [--experiment FILE]

Subscribes to `pub.` on the event stream and records each number inside each
published object (`cryo.values.temperature`) with its timestamp in
`<paths.state>/history.sqlite` (`clients.historystore`), written as it comes in:
one transaction for what each poll brought, nothing held across a wait, so a
crash loses nothing it took in. Fine values are kept `history.retention_days`
(30), minute buckets ten times longer. Whenever it registers (started, or again:
a new server, a stop that outlasted the server's timeout) it asks the server's
`_replay` for everything published since the history was last complete, page by
page, and again once the stream is seen flowing (what came before its
subscription took hold); and whenever the stream skips a publication number
(`seq`: it fell behind, and the server dropped what did not fit its queue). A
value it holds already is left out. So what was published while it was away or
behind is taken back, within the server's replay window
(`server.replay.seconds`, 120). Older than that it takes the retained values the
server holds; the rest stays a gap, and is logged as one. A restarted server
starts with an empty replay.

`history`: `name` (or `names`, a list; prefixes), `since` and `until` (seconds
since the epoch, or negative: that long ago; default the last hour up to now),
`points` (at most, default 500) -> {name: [[ts, min, max, mean], ...]}.
`summary`: `names` (exact names), `since`, `until` -> each name's value in force at
both ends, min, mean, max and count over the range, and `complete_until` (the run
catalog asks it as a run ends). A program of its own, so a slow disk never touches the server.
"""

import argparse
import functools
import logging
import os
import signal
import sqlite3
import sys
import time

import experiments
from runcontrol.client.client import Client
from clients.historystore import Store
from runcontrol import logsetup, protocol
from runcontrol.errors import ConfigError, ProtocolError, Refused, RequestFailed, ServerUnavailable

log = logging.getLogger("clients.historian")

EXPIRE_EVERY_S = 3600.0
MAX_POINTS = 10000
MAX_SUMMARY = 100


class Historian(Client):
    def __init__(self, name, store, **kwargs):
        super().__init__(name, meta={"role": "historian"}, **kwargs)
        self.store = store
        self.recorded = 0
        self.complete_until = store.complete_until()  # every value published up to this time is recorded
        # Between losing the registration and having caught up, what the stream brings is recorded but does
        # not move complete_until: the stream may have had a hole (a restarted server, a subscription not yet
        # taken hold).
        self.catching_up = False
        self.stream_heard = False     # a publication came on the stream since the last registration
        self._seq = None              # the server's number of the last publication the stream brought
        self._asked = None            # the request of the catch-up in flight
        self._replaying = None        # the server instance whose replay it asked
        self._resume_from = None      # replayed up to this before the stream was heard: ask again once it is
        self.subscribe("pub.", self._on_published)

    def poll(self, timeout=0.0):
        """Client.poll, then what it brought written at once (also while `request` or `connect` wait)."""
        handled = super().poll(timeout)
        self.flush()
        return handled

    def flush(self):
        self.recorded += self.store.flush(self.complete_until)

    def _take(self, key, data, ts):
        for name, value in protocol.published_numbers(key, data, []):
            self.store.add(name, ts, value)

    def _on_published(self, topic, event):
        if not isinstance(event, dict):
            return
        ts = event.get("ts")
        ts = ts if isinstance(ts, (int, float)) else time.time()
        self._take(topic[len("pub."):], event.get("data"), ts)
        self._follow(event.get("seq"))
        if not self.catching_up:
            self.complete_until = max(self.complete_until or ts, ts)
        if not self.stream_heard:
            self.stream_heard = True
            if self._resume_from is not None:
                since, self._resume_from = self._resume_from, None
                self._ask_replay(since, heard=True)

    # --- taking back what was published while away --------------------------------------------

    def _follow(self, seq):
        """A publication missing between two on the stream (this historian fell behind, and the server dropped
        what did not fit its queue; or another server took over): take it from the replay."""
        last, self._seq = self._seq, seq
        if last is None or seq is None or seq == last + 1:
            return
        log.warning("the stream went from publication %s to %s: asking the server's replay for what is between",
                    last, seq)
        if self._asked is not None:
            self.abandon(self._asked)
        self.catching_up = True
        self._ask_replay(self.complete_until or 0.0, heard=True)

    def _unregister(self):
        super()._unregister()
        self.catching_up = True

    def _on_registered(self, welcome, was_registered):
        super()._on_registered(welcome, was_registered)
        if not was_registered or welcome.instance != self._replaying:   # a server restarted at the same address
            self._replaying = welcome.instance
            self._catch_up()

    def _catch_up(self):
        """Registered (again): ask the server's replay for what was published since the history was complete.
        What comes on the stream meanwhile is recorded too, and proves the subscription holds: a replay asked
        for after that leaves nothing out."""
        if self._asked is not None:
            self.abandon(self._asked)
        self.catching_up, self.stream_heard, self._resume_from, self._seq = True, False, None, None
        self._ask_replay(self.complete_until or 0.0, heard=False)

    def _ask_replay(self, since, heard):
        """`heard`: the stream was heard before this chain of pages was asked for."""
        self._asked = self.start(protocol.make_replay(since),
                                 on_answer=functools.partial(self._on_replay, since, heard))

    def _on_replay(self, since, heard, answer):
        self._asked = None
        try:
            page = protocol.parse_replay_page(answer.value())
        except (ProtocolError, RequestFailed) as exc:
            log.warning("the server replays nothing since %.3f (%s): what was published while this historian "
                        "was away is a gap", since, exc)
            self.catching_up = False
            return
        for item in page.items:
            self._take(f"{item['from']}.{item['topic']}", item.get("data"), item["ts"])
        if since and page.kept_from > since:
            log.warning("values published from %.3f to %.3f are no longer in the server's replay (a long "
                        "absence, or a restarted server): of those only the retained ones are taken back",
                        since, page.kept_from)
            self._asked = self.start({"cmd": "_retained"},
                                     on_answer=functools.partial(self._on_retained, since, page, heard))
        else:
            self._after_page(page, heard)

    def _on_retained(self, since, page, heard, answer):
        """The last value of each retained topic published in the gap before the replay starts."""
        self._asked = None
        if answer.ok and isinstance(answer.result, dict):
            for key, held in answer.result.items():
                ts = held.get("ts") if isinstance(held, dict) else None
                if isinstance(ts, (int, float)) and since < ts <= page.kept_from:
                    self._take(key, held.get("data"), ts)
        else:
            log.warning("no retained values from the server: %s", answer.error)
        self._after_page(page, heard)

    def _after_page(self, page, heard):
        self.complete_until = max(self.complete_until or page.next, page.next)
        if page.more:
            self._ask_replay(page.next, heard)
        elif heard:
            self.catching_up = False
            log.info("history complete up to %.3f: the server's replay is taken", page.next)
        elif self.stream_heard:
            self._ask_replay(page.next, heard=True)
        else:
            self._resume_from = page.next

    # --- commands -------------------------------------------------------------------------------

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

    def cmd_summary(self, msg):
        """Each of `names` (exact names) between `since` and `until` (epoch seconds): {"values": {name: {begin, end,
        min, mean, max, count}}, "complete_until": the time up to which the history holds every value}."""
        names = msg.get("names")
        if not isinstance(names, list) or not names or len(names) > MAX_SUMMARY \
                or not all(isinstance(n, str) and n for n in names):
            raise Refused(f"summary needs 'names': a list of 1 to {MAX_SUMMARY} names", protocol.BAD_FIELD)
        now = time.time()
        since, until = when(msg.get("since"), now, "since"), when(msg.get("until", now), now, "until")
        if until < since:
            raise Refused(f"'until' ({until}) must not come before 'since' ({since})", protocol.BAD_FIELD)
        self.flush()
        live = self.registered and not self.catching_up   # taking the stream as it comes: complete up to now
        return {"values": {name: self.store.summary(name, since, until) for name in names},
                "complete_until": now if live else self.complete_until}

    def cmd_status(self, msg):
        """How many values were recorded, how many names, and up to when the history is complete."""
        return {"recorded": self.recorded, "names": len(self.store.ids), "complete_until": self.complete_until,
                "catching_up": self.catching_up}


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
            while True:
                store.expire()   # at once too: a historian restarted more often than hourly still expires
                expired = time.monotonic()
                while (left := expired + EXPIRE_EVERY_S - time.monotonic()) > 0:
                    historian.poll(left)
    except ServerUnavailable as exc:
        print(f"historian: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
