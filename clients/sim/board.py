"""A simulated skipper-CCD readout board: a control port over TCP, and images streamed as UDP packets.

  python -m clients.sim.board --board 1 --control 127.0.0.1:7101 [--rate 2000] [--loss 0.01]
      [--corrupt 0.01] [--drop-every 5000 --drop-for 1.0] [--die-after 20000] [--seed 1]

The reader connects to the control port and sends JSON lines: `{"cmd":
"configure", "rows": R, "cols": C, "samples": S, "exposure": E, "target": [host,
port]}` then `{"cmd": "start"}` (each answered `{"ok": true}` or `{"ok": false,
"error": ...}`); `{"cmd": "stop"}` ends the stream; `{"cmd": "status"}` answers `{"ok": true,
"board", "streaming", "sent"}`, also on a second connection (a liveness probe)
while the reader holds the link. While started, the board reads
out one image after another (`exposure` seconds apart), each as packets of
`clients.sim.ccdpackets` sent to `target` at `rate` packets a second. For tests
(seeded): `--loss` packets not sent (their sequence numbers skipped), `--corrupt`
packets garbled, `--drop-every N` packets the link drops (the control connection
closed, nothing sent, connections refused) for `--drop-for` seconds, and
`--die-after N` packets the board goes away for good (the process ends). A board
is not an Orbit client: it is hardware, reached only by its reader.
"""

import argparse
import asyncio
import json
import logging
import random
import signal
import socket
import sys
import time

import numpy

from runcontrol.client.busaccess import host_port
from clients.sim import ccdpackets
from runcontrol import logsetup

log = logging.getLogger("clients.sim.board")

PER_PACKET = 256   # samples per packet
BASELINE = 1000


class Board:
    def __init__(self, args):
        self.args = args
        self.id = args.board
        self.rng = random.Random(args.seed)
        self.noise = numpy.random.default_rng(args.seed)
        self.settings = None
        self.streaming = None
        self.seq = 0
        self.sent = 0
        self.down_until = 0.0
        self.control = None
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ended = asyncio.Event()

    async def serve(self):
        server = await asyncio.start_server(self._control, *self.args.control)
        log.info("board %d: control on %s:%d", self.id, *self.args.control)
        async with server:
            await self.ended.wait()

    async def _control(self, reader, writer):
        """The reader's control link; a second connection (a liveness probe, a look by hand) may ask `status` only."""
        if time.monotonic() < self.down_until:
            writer.close()
            return
        owner = self.control is None
        if owner:
            self.control = writer
        try:
            while line := await reader.readline():
                answer = self._order(line) if owner else self._look(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._stop_stream()
            if self.control is writer:
                self.control = None
            writer.close()

    def _look(self, line):
        try:
            cmd = json.loads(line).get("cmd")
        except (ValueError, AttributeError):
            cmd = None
        if cmd == "status":
            return self._order(line)
        return {"ok": False, "error": "another connection holds the control link: only status here"}

    def _order(self, line):
        try:
            order = json.loads(line)
            cmd = order["cmd"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": f"not an order: {line[:80]!r}"}
        if cmd == "configure":
            try:
                self.settings = {"rows": int(order["rows"]), "cols": int(order["cols"]),
                                 "samples": int(order.get("samples", 1)), "exposure": float(order.get("exposure", 0)),
                                 "target": (str(order["target"][0]), int(order["target"][1]))}
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                return {"ok": False, "error": f"configure needs rows, cols, target: {exc}"}
            return {"ok": True}
        if cmd == "start":
            if self.settings is None:
                return {"ok": False, "error": "configure first"}
            self._stop_stream()
            self.streaming = asyncio.ensure_future(self._stream())
            return {"ok": True}
        if cmd == "stop":
            self._stop_stream()
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, "board": self.id, "streaming": self.streaming is not None, "sent": self.sent}
        return {"ok": False, "error": f"no order {cmd!r}"}

    def _stop_stream(self):
        if self.streaming is not None:
            self.streaming.cancel()
            self.streaming = None

    async def _stream(self):
        s, image = self.settings, 0
        interval = 1.0 / self.args.rate
        due = time.monotonic()
        while True:
            for row in range(s["rows"]):
                for col in range(0, s["cols"], PER_PACKET):
                    count = min(PER_PACKET, s["cols"] - col)
                    pixels = (BASELINE + self.noise.normal(0, 5, count)).astype("<u2")
                    self._send(ccdpackets.pack(self.id, self.seq, image, time.time(), row, col, s["rows"], s["cols"],
                                               s["samples"], pixels), s["target"])
                    due += interval
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -0.5:
                        due = time.monotonic()  # far behind: do not burst to catch up
            image += 1
            if s["exposure"]:
                await asyncio.sleep(s["exposure"])

    def _send(self, packet, target):
        self.seq += 1
        self.sent += 1
        args = self.args
        if args.die_after and self.sent >= args.die_after:
            log.warning("board %d: gone for good after %d packets", self.id, self.sent)
            self.ended.set()
            raise asyncio.CancelledError
        if args.drop_every and self.sent % args.drop_every == 0:
            log.warning("board %d: link dropped for %.1f s", self.id, args.drop_for)
            self.down_until = time.monotonic() + args.drop_for
            if self.control is not None:
                self.control.close()
            raise asyncio.CancelledError
        if self.rng.random() < args.loss:
            return
        if self.rng.random() < args.corrupt:
            packet = bytes(self.rng.randrange(256) for _ in range(8)) + packet[8:]
        try:
            self.udp.sendto(packet, target)
        except OSError as exc:
            log.debug("send to %s: %s", target, exc)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.sim.board", description=__doc__.split("\n")[0])
    parser.add_argument("--board", type=int, required=True, help="board id")
    parser.add_argument("--control", required=True, type=host_port, help="host:port of the control port")
    parser.add_argument("--rate", type=float, default=2000.0, help="packets a second")
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--corrupt", type=float, default=0.0)
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--drop-for", type=float, default=1.0)
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    board = None

    async def run():
        nonlocal board
        board = Board(args)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, board.ended.set)
        await board.serve()
    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"board {args.board}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
