"""The client library's asyncio driver: a `Client` served from an event loop, beside the program's coroutines.

`await serve(client, stop)` runs the client's `poll()` whenever one of its
sockets has something (and at least every TICK_S, for its timers) until `stop`
is set; handlers and run hooks run in the loop's thread, as they do in
`run_forever()`. The blocking calls (`connect`, `request`, `wait`) must not be
used inside the loop: use `client.start(msg, on_answer=...)` or `await ask(...)`.
"""

import asyncio

TICK_S = 0.05
RENEW_S = 1.0


async def serve(client, stop):
    """Drive `client` until the asyncio.Event `stop` is set."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    watched, renewed = set(), 0.0
    try:
        while not stop.is_set():
            wanted = set(client.fds())
            if wanted != watched or loop.time() - renewed > RENEW_S:
                # all anew: a socket closed and another opened may reuse its number
                for fd in watched:
                    loop.remove_reader(fd)
                for fd in wanted:
                    loop.add_reader(fd, woken.set)
                watched, renewed = wanted, loop.time()
            woken.clear()
            for _ in range(1000):  # handle what is there; a flood yields to the other coroutines
                if not client.poll(0):
                    break
            try:
                await asyncio.wait_for(woken.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass
    finally:
        for fd in watched:
            loop.remove_reader(fd)


async def ask(client, msg, timeout=5.0):
    """Send a request from inside the loop and await its answer (a protocol.Answer); TimeoutError after `timeout`."""
    future = asyncio.get_running_loop().create_future()
    pending = client.start(msg, on_answer=lambda answer: future.done() or future.set_result(answer))
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        client.abandon(pending)
        raise
