"""A receiver: an Orbit client that also takes in data (UDP, TCP, ZeroMQ PULL) and publishes what it made of it.

Subclass `Receiver`, write `async def handle_packet(self, data, source)`, add
listeners, and `run()`. Each packet goes into one bounded queue (a full queue
drops and counts it: memory never grows without limit) and from there to
`handle_packet`, one at a time. A UDP listener opened with `batches=True` takes
instead every datagram its socket holds at each wake-up into a buffer
allocated once (`clients.kit.datagrams.Batch`) and hands them to
`handle_batch(batch)` in one call, without a queue: the socket's kernel buffer
is the queue, and what it had no room for is counted (`kernel_dropped`, for
every UDP listener). `publish_data(...)` sends what was processed on
the receiver's ZeroMQ PUB outputs, in the three modes: `local` (bind on
loopback), `outbound` (bind on an interface: the experiment's exposure rules and
CURVE keys apply), `remote` (connect to a subscriber elsewhere); a subscriber
too slow to keep up loses messages (counted), never stalls the receiver. Once a
second the rates (packets, bytes, drops, kernel drops, queue depth) are published as
`pub.<name>.rates` (retained). Commands are `cmd_*` methods and run hooks work
as for any client; the client is served by the asyncio driver. uvloop is used
where installed.
"""

import asyncio
import collections
import logging
import signal
import socket
import time

import zmq

from clients.kit.datagrams import MAX_DATAGRAM, Batch, enlarge_receive_buffer, kernel_drops
from runcontrol.client.aio import serve
from runcontrol.client.client import Client
from runcontrol.client.link import apply_curve
from experiments import checks
from runcontrol.errors import ConfigError

log = logging.getLogger("clients.kit")

QUEUE_SIZE = 10000
PUB_HWM = 1000
RATES_EVERY_S = 1.0
TCP_READ = 65536


class Counters:
    """What a receiver counts; `rates()` turns the last second's growth into rates."""

    FIELDS = ("packets", "bytes", "dropped", "kernel_dropped", "processed", "errors", "published", "unpublished")

    def __init__(self):
        for field in self.FIELDS:
            setattr(self, field, 0)
        self._last = (time.monotonic(), self.snapshot())

    def snapshot(self):
        return {field: getattr(self, field) for field in self.FIELDS}

    def rates(self, depth):
        now, current = time.monotonic(), self.snapshot()
        then, before = self._last
        self._last = (now, current)
        span = max(now - then, 1e-6)
        return {**current, "queue": depth, "packets_per_s": round((current["packets"] - before["packets"]) / span, 1),
                "bytes_per_s": round((current["bytes"] - before["bytes"]) / span, 1),
                "dropped_per_s": round((current["dropped"] - before["dropped"]) / span, 1),
                "kernel_dropped_per_s": round((current["kernel_dropped"] - before["kernel_dropped"]) / span, 1)}


class Receiver(Client):
    """An Orbit client that takes in data; see the module's description."""

    def __init__(self, name, queue_size=QUEUE_SIZE, **kwargs):
        super().__init__(name, **kwargs)
        self.queue_size = queue_size
        self.counters = Counters()
        self.stopping = None          # an asyncio.Event, made in run()
        self._queue = collections.deque()   # (data, source), at most queue_size
        self._arrived = None                 # an asyncio.Event: the worker waits on it when the queue is empty
        self._listeners = []          # coroutine functions that open a listener in the loop
        self._closers = []
        self._udp = []                # the UDP listeners' sockets, for what the kernel dropped
        self.outputs = []

    # --- what a subclass writes ----------------------------------------------------------------

    def more_rates(self):
        """Figures of the subclass's own published beside the receiver's rates every second."""
        return {}

    async def handle_packet(self, data, source):
        """One packet (bytes) from `source` (an address, or the listener's name)."""
        raise NotImplementedError

    def handle_batch(self, batch):
        """The datagrams a UDP listener opened with `batches=True` read at one wake-up (a
        `clients.kit.datagrams.Batch`, whose buffer is reused at the next: copy what must outlive the call). Runs in
        the event loop and must not wait; what takes long goes to a thread (as `Acquisition` writes its files)."""
        raise NotImplementedError

    async def main(self):
        """What runs beside the listeners until the receiver stops (the acquisition loop, say); by default nothing."""
        await self.stopping.wait()

    # --- listeners -------------------------------------------------------------------------------

    def listen_udp(self, host, port, batches=False, max_size=MAX_DATAGRAM):
        """Take datagrams on host:port; each is a packet, for `handle_packet`, or with `batches` all those that
        came since the last look, for `handle_batch` (a datagram longer than `max_size` is cut there, its
        length kept)."""
        async def start():
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, port))
            enlarge_receive_buffer(sock)
            self._udp.append(sock)
            if batches:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._drain, sock, Batch(max_size))
                self._closers.append(lambda: (loop.remove_reader(sock.fileno()), sock.close()))
                return sock.getsockname()
            transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
            self._closers.append(transport.close)
            return transport.get_extra_info("sockname")
        self._listeners.append(start)

    def listen_tcp(self, host, port):
        """Take TCP connections on host:port; each read is a packet (a stream: the handler finds its frames)."""
        async def start():
            server = await asyncio.start_server(self._serve_stream, host, port)
            self._closers.append(server.close)
            return server.sockets[0].getsockname()
        self._listeners.append(start)

    def listen_pull(self, address):
        """Take messages from a ZeroMQ PULL socket bound (or connected, with `>` first) to `address`."""
        async def start():
            import zmq.asyncio
            ctx = zmq.asyncio.Context.instance()
            sock = ctx.socket(zmq.PULL)
            sock.setsockopt(zmq.RCVHWM, self.queue_size)
            sock.setsockopt(zmq.LINGER, 0)
            if address.startswith(">"):
                sock.connect(address[1:])
            else:
                sock.bind(address)
            task = asyncio.ensure_future(self._pull(sock))
            self._closers.append(lambda: (task.cancel(), sock.close()))
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._listeners.append(start)

    def take(self, data, source):
        """A packet arrived: queue it, or drop and count it when the queue is full."""
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(data)
        if len(self._queue) >= self.queue_size:
            counters.dropped += 1
            return
        self._queue.append((data, source))
        if len(self._queue) == 1:
            self._arrived.set()

    def _drain(self, sock, batch):
        try:
            count = batch.fill(sock)
        except OSError as exc:   # an ICMP error a datagram socket reports, say: the next read goes on
            log.warning("%s: reading UDP at %s: %s", self.name, sock.getsockname(), exc)
            return
        if not count:
            return
        counters = self.counters
        counters.packets += count
        counters.bytes += batch.total()
        try:
            self.handle_batch(batch)
            counters.processed += count
        except Exception:  # one bad batch must not stop the receiver
            counters.errors += count
            log.exception("%s: a batch of %d packets could not be handled", self.name, count)

    async def _serve_stream(self, reader, writer):
        source = writer.get_extra_info("peername")
        try:
            while data := await reader.read(TCP_READ):
                self.take(data, source)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _pull(self, sock):
        while True:
            self.take(await sock.recv(), "pull")

    # --- outputs ---------------------------------------------------------------------------------

    def add_output(self, mode, address, curve=None):
        """A ZeroMQ PUB output: `local` or `outbound` binds `address`, `remote` connects to it. `curve`:
        (server public, our public, our secret) for a remote subscriber, or the server's secret for a bind."""
        if mode not in ("local", "outbound", "remote"):
            raise ConfigError(f"output mode {mode!r}: local, outbound or remote")
        if mode == "local" and not checks.is_loopback(address):
            raise ConfigError(f"a local output binds on loopback, not {address}: say outbound for an interface")
        if mode == "outbound" and not checks.is_loopback(address) and curve is None:
            raise ConfigError(f"output {address} can be reached from the network: give it CURVE keys")
        sock = self._ctx.socket(zmq.XPUB)  # a PUB that says when a subscriber is full, rather than dropping silently
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        sock.setsockopt(zmq.LINGER, 0)
        if mode == "remote":
            apply_curve(sock, curve)
            sock.connect(address)
        else:
            if curve is not None:
                sock.curve_server = True
                sock.curve_secretkey = curve
            sock.bind(address)
        self.outputs.append(sock)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish_data(self, *frames):
        """Send `frames` on every output without waiting: a full subscriber loses it (counted)."""
        for sock in self.outputs:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
                self.counters.published += 1
            except zmq.Again:
                self.counters.unpublished += 1

    # --- running ---------------------------------------------------------------------------------

    def counts(self):
        """The receiver's counters now (`Counters.FIELDS`), what the kernel dropped read afresh."""
        self._count_kernel_drops()
        return self.counters.snapshot()

    def kernel_dropped(self):
        """Datagrams the kernel dropped for want of room, all UDP listeners together, since they were opened."""
        return sum(kernel_drops(sock) for sock in self._udp if sock.fileno() != -1)

    def _count_kernel_drops(self):
        self.counters.kernel_dropped = self.kernel_dropped()

    def cmd_rates(self, msg):
        """Packets, bytes, drops (ours and the kernel's) and queue depth: totals and the last second's rates."""
        self._count_kernel_drops()
        return self.counters.rates(len(self._queue))

    def serve(self, use_uvloop=None):
        """Serve until SIGTERM, SIGINT or `stop()`; returns what `main()` returned (an exit status).
        `use_uvloop`: None for uvloop where installed, False for asyncio's own loop, True to insist."""
        if use_uvloop is not False:
            try:
                import uvloop
                return uvloop.run(self._serve())
            except ImportError:
                if use_uvloop:
                    raise ConfigError("uvloop is not installed (pip install uvloop)") from None
        return asyncio.run(self._serve())

    def stop(self):
        super().stop()
        if self.stopping is not None:
            self.stopping.set()

    async def _serve(self):
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self._arrived = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        self.addresses = [await start() for start in self._listeners]
        tasks = [asyncio.ensure_future(serve(self, self.stopping)), asyncio.ensure_future(self._work()),
                 asyncio.ensure_future(self._publish_rates())]
        try:
            return await self.main()
        finally:
            self.stopping.set()
            for close in self._closers:
                close()
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sock in self.outputs:
                sock.close()
            self.poll(0.1)  # the last messages out

    async def _work(self):
        queue, arrived, handle, counters = self._queue, self._arrived, self.handle_packet, self.counters
        while True:
            if not queue:
                arrived.clear()
                await arrived.wait()
                continue
            data, source = queue.popleft()
            try:
                await handle(data, source)
                counters.processed += 1
            except Exception:  # one bad packet must not stop the receiver
                counters.errors += 1
                log.exception("%s: a packet from %s could not be handled", self.name, source)
            if counters.processed % 256 == 0:
                await asyncio.sleep(0)  # a long burst still lets the listeners and the client have their turn

    async def _publish_rates(self):
        while True:
            await asyncio.sleep(RATES_EVERY_S)
            for sock in self.outputs:  # the subscriptions the outputs were told of: read, so they never pile up
                while sock.poll(0):
                    sock.recv()
            if self.registered:
                self._count_kernel_drops()
                self.publish("rates", {**self.counters.rates(len(self._queue)), **self.more_rates()}, retain=True)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receiver):
        self.receiver = receiver

    def datagram_received(self, data, addr):
        self.receiver.take(data, addr)
