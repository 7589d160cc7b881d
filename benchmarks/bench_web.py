"""The web program while damicm runs: requests per second and p99 of /api/status and /metrics, and its CPU with pages open.

damicm (`run.py --headless`, a copy with ports of its own) with its web program.
(a) /api/status and (b) /metrics: 2,000 requests each from 8 concurrent
connections (aiohttp's client, in this process); requests per second and the
99th percentile. Reference: a bare aiohttp server in a process of its own that
answers every request with the same bytes as /api/status, measured the same way
in the same run. (c) the web program's CPU (percent of one core) over 10 s with
no page open (the reference), and with 10 pages open (each a live stream of
server-sent events). No targets.

Run: python benchmarks/bench_web.py [--requests 2000] [--cpu-seconds 10]
"""

import argparse
import asyncio
import json
import multiprocessing
import socket
import subprocess
import sys
import time

import psutil

import common
from figures import Report

from tests.helpers import damicm_copy

CONCURRENCY = 8
PAGES = 10


async def load(url, requests, concurrency=CONCURRENCY):
    """(requests per second, p99 seconds) of GETs of `url`, `concurrency` at a time."""
    import aiohttp
    took = []
    queue = list(range(requests))

    async def worker(session):
        while queue:
            queue.pop()
            start = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}")
            took.append(time.perf_counter() - start)
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(concurrency))), 120)
        elapsed = time.perf_counter() - start
    return requests / elapsed, common.percentile(took, 0.99)


def serve_bare(port, body):
    from aiohttp import web

    async def answer(request):
        return web.Response(body=body, content_type="application/json")
    app = web.Application()
    app.router.add_get("/", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def pages_open(url, seconds, pid):
    """The web program's CPU while `PAGES` streams are read for `seconds`."""
    import aiohttp
    stop = asyncio.Event()

    async def page(session):
        async with session.get(url + "/api/stream") as response:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(response.content.readany(), 0.5)
                except asyncio.TimeoutError:
                    pass
    async with aiohttp.ClientSession() as session:
        readers = [asyncio.ensure_future(page(session)) for _ in range(PAGES)]
        await asyncio.sleep(2)   # connected, first status sent
        cpu = await cpu_of(pid, seconds)
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
    return cpu


async def cpu_of(pid, seconds):
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    await asyncio.sleep(seconds)
    after = proc.cpu_times()
    return 100.0 * ((after.user + after.system) - (before.user + before.system)) / seconds


def wait_web(url, deadline_s=90):
    import urllib.request
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/status", timeout=5) as response:
                snap = json.loads(response.read())
            programs = (snap.get("run") or {}).get("programs") or {}
            if programs and all(p["state"] == "RUNNING" for p in programs.values()):
                return snap
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("damicm's web program did not show every program RUNNING")


def wait_listening(port, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cpu-seconds", type=float, default=10.0)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("web", requests=args.requests, concurrency=CONCURRENCY, cpu_seconds=args.cpu_seconds,
                    pages=PAGES)
    folder = common.scratch("orbit-bench-web-")
    path = damicm_copy(folder)
    url = "http://" + json.loads(path.read_text())["programs"]["web"]["cmd"][-1]
    damicm = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=common.ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    bare = None
    try:
        snap = wait_web(url)
        web_pid = snap["run"]["programs"]["web"]["pid"]
        body = json.dumps(snap).encode()
        port = common.free_port()
        bare = multiprocessing.Process(target=serve_bare, args=(port, body), daemon=True)
        bare.start()
        wait_listening(port)
        status = asyncio.run(load(url + "/api/status", args.requests))
        metrics = asyncio.run(load(url + "/metrics", args.requests))
        reference = asyncio.run(load(f"http://127.0.0.1:{port}/", args.requests))
        idle = asyncio.run(cpu_of(web_pid, args.cpu_seconds))
        watched = asyncio.run(pages_open(url, args.cpu_seconds, web_pid))
    finally:
        common.stop_all([bare])
        common.stop_group(damicm, 120)
    print(f"snapshot {len(body)} bytes; {args.requests} requests, {CONCURRENCY} at a time")
    rows = (("(a) `/api/status`", status), ("(b) `/metrics`", metrics), ("bare aiohttp, the same bytes", reference))
    for label, (rate, p99) in rows:
        print(f"{label}: {rate:7.0f} requests/s, p99 {p99 * 1000:6.1f} ms (ratio to bare {rate / reference[0]:.2f})")
    print(f"(c) web program CPU: {idle:.1f} % of a core with no page open, {watched:.1f} % with {PAGES} pages open")
    report.table(("", "requests/s", "p99", "ratio to bare"), [
        (label, f"{rate:,.0f}", f"{p99 * 1000:.1f} ms", f"{rate / reference[0]:.2f}") for label, (rate, p99) in rows],
        title=f"{args.requests:,} requests each, {CONCURRENCY} at a time; the snapshot is {len(body) / 1000:.1f} KB")
    report.table(("pages open", f"web program CPU over {args.cpu_seconds:g} s"), [
        ("none (the reference)", f"{idle:.1f} % of a core"), (PAGES, f"{watched:.1f} % of a core")],
        title="(c) the web program's CPU")
    report.figure("(a) `/api/status`, requests/s", status[0], "{:,.0f}", reference[0], "bare aiohttp, the same bytes")
    report.figure("(b) `/metrics`, requests/s", metrics[0], "{:,.0f}", reference[0], "bare aiohttp, the same bytes")
    report.figure(f"(c) web program CPU with {PAGES} pages open", watched, "{:.1f} %", idle, "no page open")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
