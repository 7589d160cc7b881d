"""The host agent: one per host, run by that host's supervisord as an event listener, registered as `host.<name>`.

  python -m clients.hostagent --host NAME [--experiment FILE] [--data PATH]

Turns supervisord's PROCESS_STATE events into `_publish` of `process` at once
(the run controller looks at the host's supervisord when it hears one, so an
exit there is noticed without polling). supervisord itself learns of an exit
only at its next tick (up to a second), so the agent also holds a pidfd of
each program and says `EXITED` the moment one ends. It runs the liveness probes
the experiment gives this host's programs (`runcontrol.supervision.probes`) and
publishes `probe` ({program, pid, reason}) when one fails as many times in a row
as its spec allows: the run controller then replaces that program as hung. It publishes `figures` (retained)
every second: the load, CPU and memory of the host, the free space of the data
path, and the CPU and RSS of each program supervisord runs here. When it starts,
it stops what a previous supervisord of this host left running (one that was
killed leaves its programs behind, and nobody else would stop them). Its stdin and
stdout belong to supervisord's event listener protocol; it logs to stderr.
Must not start, restart or stop a program of its supervisord, nor act on a probe it runs: it reports,
and the run controller decides (through supervisord); the only processes it stops are those a killed
supervisord left.
"""

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import psutil

import experiments
from runcontrol.client.client import Client
from runcontrol import logsetup, process, protocol
from runcontrol.errors import ConfigError, ServerUnavailable
from runcontrol.supervision.probes import Prober

log = logging.getLogger("clients.hostagent")

FIGURES_EVERY_S = 1.0
MAX_PAYLOAD = 1 << 20  # supervisord's events are small; a bigger length is not its protocol


class ListenerProtocol:
    """supervisord's event listener protocol, without I/O: feed it bytes, it hands out events and what to answer.

    Each event is a header line (`key:value` tokens, `len:` the payload's size) and a payload of
    `key:value` tokens; the listener answers `RESULT 2\\nOK` and says `READY\\n` for the next.
    """

    READY = b"READY\n"
    OK = b"RESULT 2\nOK"

    def __init__(self):
        self._buffer = b""
        self._header = None

    def feed(self, data):
        """Events complete in what was read so far: [(header dict, payload dict)]. ValueError on garbage."""
        self._buffer += data
        events = []
        while True:
            if self._header is None:
                line, found, rest = self._buffer.partition(b"\n")
                if not found:
                    if len(self._buffer) > 4096:
                        raise ValueError("an event header longer than 4096 bytes")
                    return events
                self._header, self._buffer = tokens(line), rest
                size = self._header.get("len", "")
                if not size.isdigit() or int(size) > MAX_PAYLOAD:
                    raise ValueError(f"an event header without a usable len: {line[:200]!r}")
            size = int(self._header["len"])
            if len(self._buffer) < size:
                return events
            payload, self._buffer = self._buffer[:size], self._buffer[size:]
            events.append((self._header, tokens(payload.split(b"\n", 1)[0])))
            self._header = None


def tokens(line):
    """`a:1 b:2` -> {"a": "1", "b": "2"}."""
    pairs = (token.split(":", 1) for token in line.decode("utf-8", "replace").split())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


class HostFigures:
    """The host's load, CPU, memory and data-path free space, and the CPU and RSS of each program of its
    supervisord (the processes it started, known by the SUPERVISOR_PROCESS_NAME it gives them)."""

    def __init__(self, data_path, supervisord_pid):
        self.data_path = data_path
        self.supervisord_pid = supervisord_pid
        self._figures = {}   # pid -> (name, process.Figures)
        psutil.cpu_percent(None)

    def read(self):
        memory = psutil.virtual_memory()
        figures = {"load": [round(x, 2) for x in os.getloadavg()], "cpu_percent": psutil.cpu_percent(None),
                   "memory_percent": memory.percent, "memory_available": memory.available,
                   "data_path": str(self.data_path), "disk_free": self._disk_free(), "programs": self._programs()}
        return figures

    def _disk_free(self):
        """Free bytes where the data path is (or will be: its nearest existing parent)."""
        path = Path(self.data_path).absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None

    def _programs(self):
        try:
            children = psutil.Process(self.supervisord_pid).children()
        except psutil.Error:
            return {}
        seen = {}
        for child in children:
            if child.pid == os.getpid():
                continue
            if child.pid not in self._figures:
                try:
                    name = child.environ().get("SUPERVISOR_PROCESS_NAME")
                except psutil.Error:
                    continue
                self._figures[child.pid] = (name, process.Figures())
            name, figures = self._figures[child.pid]
            if name:
                cpu, rss = figures.of(child.pid)
                seen[name] = {"pid": child.pid, "cpu_percent": cpu, "rss": rss}
        for pid in set(self._figures) - {p["pid"] for p in seen.values()}:
            if not psutil.pid_exists(pid):
                del self._figures[pid]
        return seen


def leftovers(experiment_file, supervisord_pid):
    """Processes of this host's programs that a previous supervisord left (it was killed): started by a
    supervisord for this experiment, but not by ours, so nobody would ever stop them."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if not env.get("SUPERVISOR_PROCESS_NAME") or env.get("ORBIT_EXPERIMENT") != experiment_file:
                continue
            if proc.pid != os.getpid() and supervisord_pid not in {p.pid for p in proc.parents()}:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_leftovers(experiment_file, supervisord_pid, grace_s=5.0):
    """Stop what `leftovers` finds (its process group, SIGKILL after `grace_s`); what was stopped, in words."""
    found = leftovers(experiment_file, supervisord_pid)
    for proc in found:
        process.signal_group(proc.pid, signal.SIGTERM, wake=True)
    _, alive = psutil.wait_procs(found, timeout=grace_s)
    process.kill_all(alive)
    return [f"{p.pid}" for p in found]


class HostAgent(Client):
    def __init__(self, host, data_path, events_in, answers_out, probed=None, **kwargs):
        super().__init__(protocol.HOST_AGENT + host, meta={"role": "host agent", "host": host}, **kwargs)
        self.host = host
        self.figures = HostFigures(data_path, os.getppid())
        self.protocol = ListenerProtocol()
        self._in, self._out = events_in, answers_out
        self.ended = False
        self._exits = {}  # pid -> pidfd of a program of this host, readable when it ends
        self.probed = probed or {}   # program name -> its ChildSpec, for those with a liveness probe
        self.prober = Prober()
        os.set_blocking(self._in, False)
        self.watch(self._in, self._read_events)
        self.watch(self.prober.fileno(), self._probes_failed)

    def close(self):
        self.prober.close()
        super().close()

    def cmd_status(self, msg):
        """The host's figures now."""
        return self.figures.read()

    def serve(self):
        os.write(self._out, ListenerProtocol.READY)
        due = time.monotonic()
        while not self.ended:
            self.poll(max(0.0, due - time.monotonic()))
            if time.monotonic() >= due:
                due = time.monotonic() + FIGURES_EVERY_S
                figures = self.figures.read()
                for name, program in figures["programs"].items():
                    self._watch_exit(name, program["pid"])
                if self.registered:
                    self.publish("figures", figures, retain=True)

    def _read_events(self):
        try:
            data = os.read(self._in, 65536)
        except BlockingIOError:
            return
        if not data:
            log.info("supervisord closed our stdin: the agent ends")
            self.ended = True
            return
        for header, payload in self.protocol.feed(data):
            self._tell(header.get("eventname", ""), payload)
            os.write(self._out, ListenerProtocol.OK + ListenerProtocol.READY)

    def _tell(self, eventname, payload):
        if not eventname.startswith("PROCESS_STATE_"):
            return
        pid = payload.get("pid", "")
        pid = int(pid) if pid.isdigit() else None
        state, name = eventname.removeprefix("PROCESS_STATE_"), payload.get("processname")
        if state == "RUNNING" and pid:
            self._watch_exit(name, pid)
        self.publish("process", {"host": self.host, "program": name, "state": state,
                                 "from_state": payload.get("from_state"), "pid": pid})

    def _watch_exit(self, name, pid):
        if pid in self._exits:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # gone already: supervisord tells
        self._exits[pid] = fd
        self.watch(fd, lambda: self._ended(name, pid))
        spec = self.probed.get(name)
        if spec is not None:
            env = {**os.environ, **spec.env}
            self.prober.watch((name, pid), spec.liveness, env, spec.cwd)

    def _ended(self, name, pid):
        fd = self._exits.pop(pid)
        self.unwatch(fd)
        os.close(fd)
        self.prober.unwatch((name, pid))
        self.publish("process", {"host": self.host, "program": name, "state": "EXITED", "from_state": None,
                                 "pid": pid, "seen": "pidfd"})


    def _probes_failed(self):
        for failing in self.prober.events():
            name, pid = failing.key
            if pid in self._exits:
                log.warning("%s (pid %s): %s", name, pid, failing.reason)
                self.publish("probe", {"host": self.host, "program": name, "pid": pid, "reason": failing.reason})


def probed_programs(spec, host):
    """{name: ChildSpec} of `host`'s programs that have a liveness probe."""
    return {p.name: p for p in spec.programs if p.host == host and p.liveness is not None}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.hostagent", description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True, help="this host's name in the experiment")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"),
                        help="experiment name or file (default: $ORBIT_EXPERIMENT)")
    parser.add_argument("--data", help="the folder whose free space is published (default: the experiment's "
                                       "data path, where this host's programs write)")
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.experiment:
        stopped = stop_leftovers(str(args.experiment), os.getppid())
        if stopped:
            log.warning("stopped processes a previous supervisord of this host left running: pids %s",
                        ", ".join(stopped))
    try:
        spec = experiments.load(args.experiment) if args.experiment else None
        data = args.data or (spec.paths.data if spec else ".")
        probed = probed_programs(spec, args.host) if spec else {}
        with HostAgent(args.host, data, sys.stdin.fileno(), sys.stdout.fileno(), probed,
                       experiment=args.experiment) as agent:
            agent.serve()
    except ConfigError as exc:
        print(f"host agent {args.host}: {exc}", file=sys.stderr)
        return 2
    except (ServerUnavailable, ValueError) as exc:
        print(f"host agent {args.host}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
