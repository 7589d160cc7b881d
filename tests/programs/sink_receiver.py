"""A receiver for tests: counts what comes in on UDP, TCP and PULL, publishes each packet on its PUB output.

Usage: sink_receiver.py NAME --udp H:P --tcp H:P --pull ADDR --pub ADDR [--delay S] [--queue N]
(--delay: seconds per packet, a disk slower than the packets)
"""

import argparse
import asyncio
import sys

from clients.kit.receiver import Receiver
from runcontrol.client.busaccess import host_port


class Sink(Receiver):
    def __init__(self, name, delay, **kwargs):
        super().__init__(name, **kwargs)
        self.delay = delay

    async def handle_packet(self, data, source):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.publish_data(b"data", data)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    for flag in ("--udp", "--tcp", "--pull", "--pub"):
        parser.add_argument(flag)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--queue", type=int, default=10000)
    args = parser.parse_args()
    sink = Sink(args.name, args.delay, queue_size=args.queue)
    sink.listen_udp(*host_port(args.udp))
    sink.listen_tcp(*host_port(args.tcp))
    sink.listen_pull(args.pull)
    sink.add_output("local", args.pub)
    try:
        return sink.serve()
    finally:
        sink.close()


if __name__ == "__main__":
    sys.exit(main())
