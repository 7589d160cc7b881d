"""The client library's asyncio driver: a `Client` served from an event loop, beside the program's coroutines.

`await serve(client, stop)` feeds the client's core from the loop until `stop`
is set: it wakes when one of the client's sockets is readable (the loop's
`add_reader` on their descriptors), when the next of the client's timers is
due, when the program sent something, and when `stop` is set; never on a tick.
A ZeroMQ socket's descriptor is edge-triggered: it says that something changed,
and a send or receive may take that edge, so each wake handles until the
sockets hold nothing (`client.handle_ready()`, whose last look comes after
its last send), and a send made while the driver waits wakes it. Handlers and
run hooks run in the loop's thread, as they do in `run_forever()`. The
blocking calls (`connect`, `request`, `wait`) must not be used inside the
loop: use `client.start(msg, on_answer=...)` or `await ask(...)`.
"""

import asyncio


async def serve(client, stop):
    """Drive `client` until the asyncio.Event `stop` is set."""
    loop = asyncio.get_running_loop()
    waker = Waker(loop)
    readers = Readers(loop, waker.wake)
    stopped = asyncio.ensure_future(stop.wait())
    stopped.add_done_callback(lambda _: waker.wake())
    client.wakeup = waker.wake
    try:
        while not stop.is_set():
            if not client.handle_ready():
                await asyncio.sleep(0)  # a flood: the other coroutines have their turn, then more of it
                continue
            readers.follow(client)
            await waker.wait(client.timers)
    finally:
        client.wakeup = None
        readers.close()
        stopped.cancel()


class Waker:
    """One wait of the driver: until `wake()` or the next timer; a wake while the driver works is no news."""

    def __init__(self, loop):
        self.loop = loop
        self.future = None

    def wake(self):
        if self.future is not None and not self.future.done():
            self.future.set_result(None)

    async def wait(self, timers):
        due = timers.next_due()
        self.future = self.loop.create_future()
        timer = None if due is None else self.loop.call_later(max(0.0, due - timers.clock()), self.wake)
        try:
            await self.future
        finally:
            self.future = None
            if timer is not None:
                timer.cancel()


class Readers:
    """The client's descriptors as the loop's readers, followed anew whenever they change (a socket closed and
    another opened may reuse its number: all are removed and added again)."""

    def __init__(self, loop, callback):
        self.loop, self.callback = loop, callback
        self.fds, self.changes = [], None

    def follow(self, client):
        if client.fds_changes == self.changes:
            return
        self.close()
        self.fds, self.changes = client.fds(), client.fds_changes
        for fd in self.fds:
            self.loop.add_reader(fd, self.callback)

    def close(self):
        for fd in self.fds:
            self.loop.remove_reader(fd)
        self.fds, self.changes = [], None


async def ask(client, msg, timeout=5.0):
    """Send a request from inside the loop and await its answer (a protocol.Answer); TimeoutError after `timeout`."""
    future = asyncio.get_running_loop().create_future()
    pending = client.start(msg, on_answer=lambda answer: future.done() or future.set_result(answer))
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        client.abandon(pending)
        raise
