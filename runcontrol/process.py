"""Processes of this machine: process groups, stopping with a grace, how a process ended, its figures.

The one home of process-group signals and psutil calls, shared by the local
supervision backend, the launcher behind `run.py` and the watchdog. Must not
decide when anything starts or stops: its callers do.
"""

import logging
import os
import signal
import subprocess

import psutil

log = logging.getLogger(__name__)


def signal_group(pgid, signum, wake=False):
    """Send `signum` to process group `pgid`; with `wake`, SIGCONT after it, so a stopped group hears it.

    False when the group is gone (or not ours to signal).
    """
    try:
        os.killpg(pgid, signum)
        if wake and signum not in (signal.SIGKILL, signal.SIGCONT):
            os.killpg(pgid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(popen, grace_s, signum=signal.SIGTERM):
    """Stop the process group led by `popen`: `signum`, SIGKILL after `grace_s`; always reaped.

    Returns (returncode, whether SIGKILL was needed). What is left in the group is killed too.
    """
    killed = False
    if popen.poll() is None:
        signal_group(popen.pid, signum, wake=True)
        try:
            popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            killed = True
            signal_group(popen.pid, signal.SIGKILL)
            popen.wait()
    signal_group(popen.pid, signal.SIGKILL)
    return popen.returncode, killed


def exit_status(returncode):
    """(code, signal) from a Popen return code: exactly one of the two is set."""
    return (None, signal.Signals(-returncode)) if returncode < 0 else (returncode, None)


UNNAMED_SIGNAL = "a signal"   # what a remote process was killed by when its host does not say which


def signal_name(sig):
    """The name of what killed a process (a signal.Signals, or UNNAMED_SIGNAL), or None."""
    if sig is None:
        return None
    return sig.name if isinstance(sig, signal.Signals) else str(sig)


def describe_exit(code=None, sig=None):
    """How a process ended, for a person: "exited with status 3", "killed by SIGKILL", "killed by a signal"."""
    if sig is not None:
        return f"killed by {signal_name(sig)}"
    if code is None:
        return "is running"
    return f"exited with status {code}"


def describe_returncode(returncode):
    if returncode is None:
        return "is running"
    return describe_exit(*exit_status(returncode))


def descendants(pid):
    """Every live descendant of `pid` (psutil processes), also those that left its group."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(processes):
    for proc in processes:
        try:
            proc.kill()
        except psutil.Error:
            pass


def start_time(pid):
    """The kernel's start time of `pid` (seconds since the epoch), or None when it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def command_line(pid):
    """The argv of a live `pid`, [] when it cannot be read, None when it is dead."""
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return []


def kill_recorded(pid, started):
    """Kill the group of `pid` and its descendants if it is still the process that started at `started`.

    A pid whose start time differs was reused by another process, which is left alone.
    """
    if started is None or abs((start_time(pid) or -1.0) - started) > 0.01:
        return False
    family = descendants(pid)
    signal_group(pid, signal.SIGKILL)
    kill_all(family)
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


class Figures:
    """CPU % (since the last ask) and resident memory of one pid."""

    def __init__(self):
        self._ps = None

    def of(self, pid):
        """(cpu_percent, rss) of `pid`, (None, None) when it cannot be read."""
        if pid is None:
            return None, None
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
                self._ps.cpu_percent(None)
            with self._ps.oneshot():
                return round(self._ps.cpu_percent(None), 1), self._ps.memory_info().rss
        except psutil.Error:
            return None, None
