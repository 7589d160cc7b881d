"""The local backend of the supervisor: programs as child processes of this one.

Owns fork/exec (each program in its own session, so one signal reaches all it
spawned), the pipe that carries its output, a pidfd to learn of its exit without
polling, signals to its process group, reaping, and the sweep of orphans a dead
program left behind. Must not decide when to start or stop: the supervisor does.
"""

import ctypes
import logging
import os
import signal
import subprocess
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
TAG = "ORBIT_NAME"  # every program's environment has it; so do the processes it spawns


class LocalProcess:
    """A running program: pid (also its process group), pidfd, and the read end of its output."""

    __slots__ = ("name", "pid", "pidfd", "output", "popen", "family")

    def __init__(self, name, popen, output):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.output = output
        self.family = []  # descendants seen when it was signalled, killed too once it has exited

    def read_output(self):
        """(what the program wrote since the last call, whether the pipe has ended)."""
        chunks = []
        while self.output is not None:
            try:
                data = os.read(self.output, 65536)
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
        """(code, signal) once exited and reaped, else None. Exactly one of the two is set."""
        if self.popen.poll() is None:
            return None
        code = self.popen.returncode
        return (None, signal.Signals(-code)) if code < 0 else (code, None)

    def close(self):
        self.close_output()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class LocalBackend:
    host = "local"

    def __init__(self, subreaper=False):
        self.subreaper = subreaper and set_subreaper()

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
        return LocalProcess(spec.name, popen, read_end)

    @staticmethod
    def signal(proc, signum):
        """Send `signum` to the program's whole process group (and SIGCONT, so a stopped one hears it)."""
        try:
            proc.family.extend(psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            pass
        try:
            os.killpg(proc.pid, signum)
            if signum not in (signal.SIGKILL, signal.SIGCONT):
                os.killpg(proc.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self, proc, known_pids):
        """After the program exited: kill what is left of its group, collect orphans, close fds."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.close()
        for member in proc.family:  # those that left the group (setsid) too
            try:
                member.kill()
            except psutil.Error:
                pass
        self.sweep(known_pids)

    def sweep(self, known_pids):
        """Kill and reap orphans of our programs that were handed to us (as subreaper)."""
        if not self.subreaper:
            return 0
        swept = 0
        for pid in children_of_self() - set(known_pids):
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
