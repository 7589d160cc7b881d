"""A program written for libABCD 0.1 (the unmodified library, used as its own examples use it).

Usage: legacy_client.py NAME PORT RECORD [--to NAME --count N [--size BYTES]]

Registers as NAME with the server at localhost:PORT, writes every message it
receives to RECORD (one JSON line each), and answers a `ping_me` with a `pinged`
to whoever asked. With --to it sends N messages `{"to": NAME, "cmd": "data",
"seq": i}` (padded to about BYTES), one per turn of its loop.
"""

import argparse
import json

import libABCD


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("port", type=int)
    parser.add_argument("record")
    parser.add_argument("--to")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=0)
    args = parser.parse_args()
    libABCD.network_info["port"] = args.port

    def record(msg, connection):
        with open(args.record, "a") as out:
            out.write(json.dumps(msg) + "\n")
        if msg.get("cmd") == "ping_me":
            libABCD.addmessage({"to": msg["from"], "cmd": "pinged", "by": args.name})

    libABCD.add_handler("_default", record)
    libABCD.init(args.name)
    for seq in range(args.count):
        message = {"to": args.to, "cmd": "data", "seq": seq}
        if args.size:
            message["fill"] = "x" * args.size
        libABCD.addmessage(message)
    while True:
        libABCD.handle()


if __name__ == "__main__":
    main()
