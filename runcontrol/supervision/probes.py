"""Liveness probes of programs, as Kubernetes has them (exec, tcp, http), run on a thread of their own.

Owns running each watched program's probe (an `experiments.LivenessSpec`)
every `period_s` after `initial_delay_s`, each try bounded by `timeout_s`,
counting failures in a row, and handing out `Failing(key, reason)` once a probe
failed `failures` times in a row; it then stops probing that key (its owner
replaces the program and watches the new process). Results come out of
`events()`, `fileno()` being readable when there are some, so the owner's loop
never waits on a probe. Must not signal or stop programs: its owner does.

The exec probes are children of this process: a subreaper that reaps orphans
(the local backend) must hold `spawning` while it looks, and leave `children`.
"""

import asyncio
import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

from runcontrol import process

log = logging.getLogger(__name__)

ANSWER_BYTES = 4096     # what a tcp probe reads of an answer, at most
STDERR_KEPT = 2048      # the end of an exec probe's error output, for the reason


async def within(seconds, awaitable):
    """`awaitable`'s result, or asyncio.TimeoutError after `seconds`."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


@dataclass(frozen=True)
class Failing:
    """The probe of `key` failed `failures` times in a row; `reason` says what it saw last."""
    key: object
    reason: str


class Prober:
    """Probes of many programs on one asyncio loop in a thread, started at the first `watch`."""

    def __init__(self):
        self.spawning = threading.Lock()   # held while an exec probe is forked and its pid noted
        self.children = set()              # pids of exec probes not reaped yet
        self._found = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._loop = None
        self._thread = None
        self._tasks = {}                   # key -> asyncio.Task, touched on the loop's thread only
        self._http = None                  # an aiohttp session, made at the first http probe
        self._addresses = {}               # "host:port" -> (family, sockaddr), for the tcp probes

    def watch(self, key, spec, env=None, cwd=None):
        """Probe `spec` for `key` from now on (`env` and `cwd` for an exec probe)."""
        if self._thread is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="liveness probes", daemon=True)
            self._thread.start()
        self._loop.call_soon_threadsafe(self._start, key, spec, env, cwd)

    def unwatch(self, key):
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel, key)

    def fileno(self):
        return self._wake_r

    def events(self):
        """The Failing events since the last call; never blocks."""
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        found = []
        while self._found:
            found.append(self._found.popleft())
        return found

    def close(self):
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # --- on the loop's thread -----------------------------------------------------------------

    def _start(self, key, spec, env, cwd):
        self._cancel(key)
        self._tasks[key] = self._loop.create_task(self._probe_forever(key, spec, env, cwd))

    def _cancel(self, key):
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _shut(self):
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self._cancel(key)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _probe_forever(self, key, spec, env, cwd):
        await asyncio.sleep(spec.initial_delay_s)
        failed = 0
        while True:
            started = self._loop.time()
            why = await self._try(spec, env, cwd)
            failed = 0 if why is None else failed + 1
            if failed >= spec.failures:
                self._tasks.pop(key, None)
                self._tell(Failing(key, f"liveness probe {spec.describe()} failed {failed} time(s) in a row: {why}"))
                return
            await asyncio.sleep(max(0.0, started + spec.period_s - self._loop.time()))

    async def _try(self, spec, env, cwd):
        """None when the program answered as alive, else what went wrong, in words."""
        try:
            if spec.kind == "exec":
                return await self._exec(spec, env, cwd)
            return await within(spec.timeout_s, self._tcp(spec) if spec.kind == "tcp" else self._get(spec))
        except asyncio.TimeoutError:
            return f"no answer within {spec.timeout_s:g} s"
        except OSError as exc:
            return exc.strerror or str(exc) or type(exc).__name__

    async def _tcp(self, spec):
        family, address = await self._address(spec.target)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await self._loop.sock_connect(sock, address)
            if spec.send is None:
                return None
            await self._loop.sock_sendall(sock, spec.send)
            answer = b""
            while len(answer) < ANSWER_BYTES:
                more = await self._loop.sock_recv(sock, ANSWER_BYTES - len(answer))
                if not more:
                    break
                answer += more
                if spec.expect is None or spec.expect in answer:
                    return None
        if not answer:
            return "the connection closed without an answer"
        return f"the answer does not hold {spec.expect.decode(errors='replace')!r}: " \
               f"{answer[:200].decode(errors='replace')!r}"

    async def _address(self, target):
        """(family, sockaddr) of "host:port", looked up once."""
        known = self._addresses.get(target)
        if known is None:
            host, _, port = target.rpartition(":")
            found = await self._loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
            known = self._addresses[target] = (found[0][0], found[0][4])
        return known

    async def _get(self, spec):
        if self._http is None:
            import aiohttp  # only where an http probe is used: it is slow to import
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._http.get(spec.target, allow_redirects=False) as answer:
            if 200 <= answer.status < 400:
                return None
            return f"HTTP {answer.status} {answer.reason or ''}".strip()

    async def _exec(self, spec, env, cwd):
        with self.spawning:
            child = subprocess.Popen(spec.target, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            self.children.add(child.pid)
        errors = bytearray()
        try:
            await within(spec.timeout_s, self._ended(child, errors))
        except (asyncio.TimeoutError, asyncio.CancelledError):  # the try ends with its command
            process.signal_group(child.pid, signal.SIGKILL)
            raise
        finally:
            child.wait()
            self.children.discard(child.pid)
            child.stderr.close()
        if child.returncode == 0:
            return None
        said = bytes(errors).decode(errors="replace").strip().splitlines()
        return process.describe_returncode(child.returncode) + (f": {said[-1]}" if said else "")

    async def _ended(self, child, errors):
        """Until `child` has exited and closed its error output (kept in `errors`, its end)."""
        pipe = child.stderr.fileno()
        os.set_blocking(pipe, False)
        closed = self._loop.create_future()

        def readable():
            try:
                data = os.read(pipe, 65536)
            except BlockingIOError:
                return
            if data:
                errors.extend(data)
                del errors[:-STDERR_KEPT]
            elif not closed.done():
                closed.set_result(None)

        self._loop.add_reader(pipe, readable)
        try:
            await closed
        finally:
            self._loop.remove_reader(pipe)
        fd = os.pidfd_open(child.pid)
        exited = self._loop.create_future()
        self._loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            self._loop.remove_reader(fd)
            os.close(fd)

    def _tell(self, event):
        self._found.append(event)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass
