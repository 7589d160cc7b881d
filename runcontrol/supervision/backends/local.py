"""The local backend: programs as child processes of the run controller, on this machine.

Owns fork/exec (each program in its own session, so one signal reaches all it
spawned), the pipe that carries its output, a pidfd per program in one epoll set
(exits are noticed without polling), the programs' liveness probes (a `Prober`
whose results come through the same epoll set), signals to its process group,
reaping, and the sweep of orphans a dead program left behind (as child subreaper). Must not
decide when to start or stop: the supervisor does.
"""

import ctypes
import logging
import os
import select
import signal
import subprocess
from pathlib import Path

from runcontrol import process
from runcontrol.supervision.backends.base import Backend, Exited, Hung, Output
from runcontrol.supervision.probes import Prober

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
TAG = "ORBIT_NAME"  # every program's environment has it; so do the processes it spawns
READ_CHUNK = 65536


class LocalProcess:
    """A running program: pid (also its process group), pidfd, and the read end of its output."""

    __slots__ = ("name", "pid", "pidfd", "output", "popen", "family", "figures")

    def __init__(self, name, popen, output):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.output = output
        self.family = []  # descendants seen when it was signalled, killed too once it has exited
        self.figures = process.Figures()

    def read_output(self):
        """(what the program wrote since the last call, whether the pipe has ended)."""
        chunks = []
        while self.output is not None:
            try:
                data = os.read(self.output, READ_CHUNK)
            except BlockingIOError:
                return b"".join(chunks), False
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
        return b"".join(chunks), True

    def close_output(self):
        if self.output is not None:
            os.close(self.output)
            self.output = None

    def exit_status(self):
        """(code, signal) once exited and reaped, else None."""
        if self.popen.poll() is None:
            return None
        return process.exit_status(self.popen.returncode)

    def close(self):
        self.close_output()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class LocalBackend(Backend):
    host = "local"

    def __init__(self, subreaper=False):
        self.subreaper = subreaper and set_subreaper()
        self._epoll = select.epoll()
        self._fds = {}       # fd -> (process, "exit" | "output")
        self._running = {}   # pid -> process
        self.prober = Prober()
        self._epoll.register(self.prober.fileno(), select.EPOLLIN)

    def spawn(self, spec, env):
        """Start `spec` as a new session with its output on a pipe; OSError if it cannot start."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        try:
            popen = subprocess.Popen(spec.argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=write_end, stderr=write_end, start_new_session=True,
                                     close_fds=True)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        proc = LocalProcess(spec.name, popen, read_end)
        self._running[proc.pid] = proc
        for fd, kind in ((proc.pidfd, "exit"), (proc.output, "output")):
            self._fds[fd] = (proc, kind)
            self._epoll.register(fd, select.EPOLLIN)
        if spec.liveness is not None:
            self.prober.watch(proc, spec.liveness, probe_environment(env), spec.cwd)
        return proc

    def signal(self, proc, signum):
        """`signum` to the program's whole process group (and SIGCONT, so a stopped one hears it)."""
        proc.family.extend(process.descendants(proc.pid))
        process.signal_group(proc.pid, signum, wake=True)

    def kill(self, proc):
        self.signal(proc, signal.SIGKILL)

    def kill_now(self, proc):
        self.kill(proc)
        proc.popen.wait()
        return self._finish(proc)

    def fileno(self):
        return self._epoll.fileno()

    def events(self):
        found = []
        for fd, _ in self._epoll.poll(0):
            if fd == self.prober.fileno():
                found.extend(Hung(failing.key, failing.reason) for failing in self.prober.events()
                             if self._running.get(failing.key.pid) is failing.key)
                continue
            proc, kind = self._fds.get(fd, (None, None))
            if proc is None:
                continue
            if kind == "output":
                data, ended = proc.read_output()
                if data:
                    found.append(Output(proc, data))
                if ended:
                    self._unwatch(proc.output)
                    proc.close_output()
            elif proc.exit_status() is not None:
                found.extend(self._finish(proc))
        return found

    def _finish(self, proc):
        """After the program exited: its last output, kill what is left of its group, collect orphans."""
        code, sig = proc.exit_status()
        data, _ = proc.read_output()
        self._unwatch(proc.pidfd)
        self._unwatch(proc.output)
        self._running.pop(proc.pid, None)
        self.prober.unwatch(proc)
        process.signal_group(proc.pid, signal.SIGKILL)
        proc.close()
        process.kill_all(proc.family)  # those that left the group (setsid) too
        self.reap_orphans()
        return ([Output(proc, data)] if data else []) + [Exited(proc, code, sig)]

    def _unwatch(self, fd):
        if fd is not None and self._fds.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def figures(self, proc):
        return proc.figures.of(proc.pid)

    def record(self, proc):
        return {"host": self.host, "pid": proc.pid, "started": process.start_time(proc.pid)}

    def stop_leftovers(self, records):
        stopped = []
        for name, record in records.items():
            if isinstance(record, list) and len(record) == 2:  # the form of earlier versions
                record = {"pid": record[0], "started": record[1]}
            try:
                pid, started = int(record["pid"]), float(record["started"])
            except (KeyError, TypeError, ValueError):
                continue
            if process.kill_recorded(pid, started):
                stopped.append(f"{name} (pid {pid})")
        return stopped

    def reap_orphans(self):
        """Kill and reap orphans of our programs that were handed to us (as subreaper)."""
        if not self.subreaper:
            return 0
        swept = 0
        with self.prober.spawning:  # an exec probe is a child of ours too, reaped by the prober
            for pid in children_of_self() - set(self._running) - self.prober.children:
                try:
                    if zombie(pid):
                        os.waitpid(pid, os.WNOHANG)
                    elif tagged(pid):
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        swept += 1
                except (ProcessLookupError, ChildProcessError):
                    continue
        if swept:
            log.info("killed %d orphan(s) left by programs that exited", swept)
        return swept

    def close(self):
        self.prober.close()
        self._epoll.close()


def probe_environment(env):
    """A program's environment for its exec probe, without the tag that marks the program's own processes."""
    return {key: value for key, value in env.items() if key != TAG}


def set_subreaper():
    """Become the parent of orphans our programs leave, so none escapes (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        log.warning("cannot become a child subreaper: orphans of programs go to init")
        return False


def children_of_self():
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def zombie(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def tagged(pid):
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(item.startswith(TAG.encode() + b"=") for item in environ.split(b"\0"))
