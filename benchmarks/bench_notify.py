"""Notifications: an alarm raised -> its message at the receiver, against a message sent straight to the receiver.

A real server, run controller (`python -m runcontrol.control.controller`) and notifier (`python -m
clients.notifier`, a program of the run controller) on loopback; an HTTP receiver (aiohttp, on a thread of this
process) stands for a chat service, reached by the notifier as `json://`. A client of this process publishes a
number over the limit of an alarm (`for: 0`) and, once the message has come, under it again, --alarms times
(after a random pause of up to half a second, so each publication falls anywhere between two evaluations of
the alarms). Timed: the publication -> the message's arrival, stamped by the receiver; the same for the
clearing's follow-up. The run controller's `alarm_raised` event says when it raised the alarm, which splits
each raise in two: publication -> raised (the run controller evaluates its alarms twice a second) and
raised -> arrival (the notifier: the event, its `alarms` request, the outbox fsynced, Apprise's post).
Reference, in the same run: Apprise's `json://` straight to the same receiver, --direct times, from the call to
the arrival.
Target: the p95 of publication -> arrival at most 1 s above the p95 of the direct post.

Run: python benchmarks/bench_notify.py [--alarms 40] [--direct 200]
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

import apprise
import common
from aiohttp import web
from figures import Report

from runcontrol.client.client import Client

ALARM = "level_high"
TITLE = f"[bench] ALARM {ALARM}"
CLEARED = f"[bench] cleared: ALARM {ALARM}"
TARGET_ADDED_MS = 1000.0
WAIT_S = 30.0   # for one message, before the benchmark gives up


class Receiver:
    """An HTTP receiver on loopback: each JSON body's title and when it came."""

    def __init__(self):
        self.came = []   # (title, time.time())
        self.port = common.free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the receiver did not start")

    def _serve(self, ready):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._take)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    async def _take(self, request):
        body = await request.json()
        self.came.append((body.get("title"), time.time()))
        return web.Response(text="ok")

    def url(self):
        return f"json://127.0.0.1:{self.port}/hook"

    def arrival(self, title, index, wait=time.sleep):
        """When the `index`-th message titled `title` came (waiting for it with `wait(seconds)`)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            times = [at for t, at in list(self.came) if t == title]
            if len(times) > index:
                return times[index]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{title!r} number {index + 1} did not come within {WAIT_S:g} s")
            wait(0.002)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def direct_posts(receiver, count):
    """Seconds from Apprise's call to the receiver's arrival, for `count` messages sent straight to it."""
    times = []
    for i in range(count):
        title = f"direct {i}"
        sender = apprise.Apprise()   # a new one for each message, as the notifier does
        sender.add(receiver.url())
        began = time.time()
        if not sender.notify(body="the level is above its limit\nvalue: 1.0", title=title):
            raise RuntimeError("the receiver refused a direct post")
        times.append(receiver.arrival(title, 0) - began)
    return times


def experiment(server, receiver):
    """The bench server's experiment with the notifier, one alarm and its route."""
    description = json.loads(server.path.read_text())
    description.update(
        programs={"notifier": {"cmd": ["python", "-m", "clients.notifier", "--name", "notifier"],
                               "client": "notifier", "cwd": str(common.ROOT)}},
        alarms={ALARM: {"value": "gauge.values.level", "above": 0.5, "for": 0, "message": "the level is high",
                        "actions": []}},   # told by the notifier only
        notify={"routes": {"shift": [receiver.url()]}, "rules": [{"route": "shift"}]})
    server.path.write_text(json.dumps(description))


class Gauge:
    """The publisher of the number the alarm watches; it also hears when the run controller raised the alarm."""

    def __init__(self, path):
        self.raised = []   # the `raised` stamp of each alarm_raised event
        self.client = Client("gauge", experiment=str(path))
        self.client.connect(15)
        self.client.subscribe("event.alarm_raised", self._heard)

    def _heard(self, topic, event):
        if isinstance(event, dict) and event.get("alarm") == ALARM:
            self.raised.append(event["raised"])

    def raised_after(self, began):
        """The run controller's stamp of the first raise at or after `began` (waiting for its event)."""
        deadline = time.monotonic() + WAIT_S
        while not (stamps := [r for r in self.raised if r >= began]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no alarm_raised event within {WAIT_S:g} s")
            self.client.poll(0.01)
        return stamps[0]

    def publish(self, level):
        began = time.time()
        self.client.publish("values", {"level": level})
        return began

    def wait(self, seconds):
        """Serve the client (its heartbeats, the events) for `seconds`."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.client.poll(left)

    def registered(self, name):
        return name in [c["name"] for c in self.client.request(None, "_list")]

    def close(self):
        self.client.close()


def cycles(gauge, receiver, count):
    """(publication -> raise message, publication -> raised, publication -> clearing message) for `count` raises,
    after one that is not counted (the run controller clears nothing in its first seconds)."""
    raises, evaluated, clears = [], [], []
    for i in range(count + 1):
        gauge.wait(random.uniform(0.0, 0.5))
        began = gauge.publish(1.0)
        came = receiver.arrival(TITLE, i, gauge.wait)
        if i:
            raises.append(came - began)
            evaluated.append(gauge.raised_after(began) - began)
        gauge.wait(random.uniform(0.0, 0.5))
        began = gauge.publish(0.0)
        came = receiver.arrival(CLEARED, i, gauge.wait)
        if i:
            clears.append(came - began)
    return raises, evaluated, clears


def ms(values, fraction=None):
    """The median (or the `fraction` percentile) of `values`, in ms."""
    return 1000 * (statistics.median(values) if fraction is None else common.percentile(values, fraction))


def row(what, values):
    return (what, f"{ms(values):.0f} ms", f"{ms(values, 0.95):.0f} ms", f"{1000 * max(values):.0f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--alarms", type=int, default=40)
    parser.add_argument("--direct", type=int, default=200)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("notify", alarms=args.alarms, direct=args.direct)
    receiver = Receiver()
    server = common.BenchServer(heartbeat=1.0, timeout=5.0, name="bench")
    controller = gauge = None
    try:
        direct = direct_posts(receiver, args.direct)
        experiment(server, receiver)
        server.start()
        controller = subprocess.Popen([sys.executable, "-m", "runcontrol.control.controller", "--experiment",
                                       str(server.path), "--log-level", "WARNING"], cwd=common.ROOT,
                                      start_new_session=True)
        gauge = Gauge(server.path)
        common.wait_for(lambda: gauge.registered("notifier"), 60, 0.2)
        raises, evaluated, clears = cycles(gauge, receiver, args.alarms)
    finally:
        if gauge is not None:
            gauge.close()
        if controller is not None:
            common.stop_group(controller)
        server.stop()
        receiver.close()
    notified = [r - e for r, e in zip(raises, evaluated)]
    report.table(("", "median", "p95", "max"), [
        row("Apprise `json://` straight to the receiver (the reference)", direct),
        row("alarm published -> its message at the receiver", raises),
        row("of which: published -> raised by the run controller", evaluated),
        row("of which: raised -> the message at the receiver", notified),
        row("cleared -> the follow-up at the receiver", clears)],
        title=f"{args.alarms} alarms raised and cleared; {args.direct} direct posts")
    report.figure("alarm -> message at the receiver, median", ms(raises), "{:.0f} ms", ms(direct),
                  "a direct post, median", on="excess")
    report.figure("alarm -> message at the receiver, p95", ms(raises, 0.95), "{:.0f} ms", ms(direct, 0.95),
                  "a direct post, p95", target=("<", TARGET_ADDED_MS), on="excess")
    report.figure("alarm cleared -> follow-up at the receiver, p95", ms(clears, 0.95), "{:.0f} ms",
                  ms(direct, 0.95), "a direct post, p95", on="excess")
    return report.finish()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(common.ROOT))
    sys.exit(main())
