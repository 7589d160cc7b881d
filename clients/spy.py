"""The spy: prints every message, event and log record, one line each, and logs them.

What it sees goes to `<paths.logs>/traffic.log` (else `var/log/traffic.log`),
rotated at midnight UTC; `spy.log` beside it is the spy's own output, kept by
the supervisor. Built only on the client library.

Run: python -m clients.spy [--topic PREFIX ...] [--experiment NAME | --server ADDR]
"""

import argparse
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path

import orjson

import experiments
from runcontrol.client.client import Client
from runcontrol import logsetup
from runcontrol.errors import ConfigError, ServerUnavailable

log = logging.getLogger("clients.spy")


def format_line(topic, obj):
    """One line for an event-stream message: UTC time, topic, then its content."""
    stamp = logsetup.utc_stamp(obj.get("ts", 0) if isinstance(obj.get("ts"), (int, float)) else 0)
    if topic.startswith("log."):
        return f"{stamp} {topic} {obj.get('level', '?')} {obj.get('logger', '')}: {obj.get('msg', '')}"
    return f"{stamp} {topic} {orjson.dumps(obj).decode()}"


class Spy:
    def __init__(self, client, prefixes, log_path, out=sys.stdout):
        self.out = out
        self.file_log = logging.getLogger("orbit.spy.file")
        self.file_log.propagate = False
        handler = logging.handlers.TimedRotatingFileHandler(log_path, when="midnight", utc=True,
                                                            encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.file_log.handlers[:] = [handler]
        self.file_log.setLevel(logging.INFO)
        for prefix in prefixes:
            client.subscribe(prefix, self.show)

    def show(self, topic, obj):
        line = format_line(topic, obj)
        print(line, file=self.out, flush=True)
        self.file_log.info(line)


def default_log_dir(experiment):
    if experiment:
        try:
            return experiments.load(experiment).paths.logs
        except experiments.NotFound:
            pass
    return Path("var/log")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.spy", description=__doc__.split("\n")[0])
    parser.add_argument("--topic", action="append", metavar="PREFIX",
                        help="show only topics starting with PREFIX (msg., event., log., pub.); repeatable")
    parser.add_argument("--experiment", help="experiment name or file (default: $ORBIT_EXPERIMENT)")
    parser.add_argument("--server", help="router address (default: $ORBIT_SERVER, else the beacon)")
    parser.add_argument("--name", default=f"spy-{os.getpid()}", help="client name to register as")
    parser.add_argument("--log-dir", help="folder of traffic.log (default: the experiment's paths.logs)")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    logsetup.configure("WARNING", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    experiment = args.experiment or os.environ.get("ORBIT_EXPERIMENT")
    try:
        log_dir = Path(args.log_dir) if args.log_dir else default_log_dir(experiment)
        log_dir.mkdir(parents=True, exist_ok=True)
        with Client(args.name, experiment=experiment, server=args.server) as client:
            Spy(client, args.topic or [""], log_dir / "traffic.log")
            client.connect(args.connect_timeout)
            client.run_forever()
    except (ConfigError, ServerUnavailable) as exc:
        print(f"spy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
