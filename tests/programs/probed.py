"""A program that is not a bus client, with a port its liveness probe can ask. Usage: probed.py PORT

Answers `status` lines with `ok`, and an HTTP GET with 200 (500 while the file SICK exists beside
the working directory). SIGUSR1 closes its listening port, while the process goes on (a hang a
plain tcp probe sees). Each question is one line of its output, "asked".
"""

import asyncio
import os
import signal
import sys


async def answer(reader, writer):
    line = await reader.readline()
    print("asked", flush=True)
    if line.startswith(b"GET "):
        status = b"500 Sick" if os.path.exists("SICK") else b"200 OK"
        writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
    elif line.strip() == b"status":
        writer.write(b"ok\n")
    await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]))
    closed = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, closed.set)
    print(f"up, pid {os.getpid()}", flush=True)
    await closed.wait()
    server.close()
    print("port closed", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
