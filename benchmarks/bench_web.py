"""The web program while damicm runs: requests per second and p99 of /api/status and /metrics, and its CPU with pages open.

damicm (`run.py --headless`, a copy with ports of its own) with its web program.
(a) /api/status and (b) /metrics: 2,000 requests each from 8 concurrent
connections (aiohttp's client, in this process); requests per second and the
99th percentile. Reference: a bare aiohttp server in a process of its own that
answers every request with the same bytes as /api/status, measured the same way
in the same run. (c) the web program's CPU (percent of one core) over 10 s with
no page open, and with 10 pages open (each a live stream of server-sent events).

Run: python benchmarks/bench_web.py
"""

import asyncio
import json
import multiprocessing
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import common

from tests.helpers import damicm_copy

REQUESTS = 2000
CONCURRENCY = 8
CPU_WINDOW_S = 10.0
PAGES = 10


async def load(url, requests=REQUESTS, concurrency=CONCURRENCY):
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


def main():
    common.exit_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="orbit-bench-web-"))
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
        time.sleep(1.5)
        status = asyncio.run(load(url + "/api/status"))
        metrics = asyncio.run(load(url + "/metrics"))
        reference = asyncio.run(load(f"http://127.0.0.1:{port}/"))
        idle = asyncio.run(cpu_of(web_pid, CPU_WINDOW_S))
        watched = asyncio.run(pages_open(url, CPU_WINDOW_S, web_pid))
    finally:
        if bare is not None:
            common.stop_all([bare])
        damicm.send_signal(signal.SIGTERM)
        damicm.wait(60)
    print(f"snapshot {len(body)} bytes; {REQUESTS} requests, {CONCURRENCY} at a time")
    for label, (rate, p99) in (("(a) /api/status", status), ("(b) /metrics", metrics),
                               ("    bare aiohttp, the same bytes", reference)):
        print(f"{label}: {rate:7.0f} requests/s, p99 {p99 * 1000:6.1f} ms (ratio to bare {rate / reference[0]:.2f})")
    print(f"(c) web program CPU: {idle:.1f} % of a core with no page open, {watched:.1f} % with {PAGES} pages open")


if __name__ == "__main__":
    main()
