"""The supervision backend interface: what the supervisor asks of the place where programs run.

A backend spawns a program's processes, signals them, kills them, tells the
supervisor what they wrote and when they exited (as events it hands out from
`events()`, its `fileno()` readable when there are some), reports their CPU and
memory, and records enough about each to stop it after a crash of the run
controller. The supervisor holds one backend per host name; it decides when to
start, stop and restart, a backend never does.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    """A program wrote `data` (its stdout and stderr together)."""
    handle: object
    data: bytes


@dataclass(frozen=True)
class Exited:
    """A program's process has exited and was reaped: `code` or `signal` is set (a signal.Signals, or
    process.UNNAMED_SIGNAL where the host does not say which); or it could not be started, and `error` says why."""
    handle: object
    code: object
    signal: object
    error: str = ""


class Backend:
    """Where programs run. `host` is the name programs use for it in the experiment (`local` here)."""

    host = None

    def spawn(self, spec, env):
        """Start the program `spec` with `env`; a handle with `.pid` and `.name`. OSError if it cannot start."""
        raise NotImplementedError

    def signal(self, handle, signum):
        """Send `signum` to every process of the program (a stopped one hears it too)."""
        raise NotImplementedError

    def kill(self, handle):
        """SIGKILL every process of the program at once; its exit still comes as an event."""
        raise NotImplementedError

    def kill_now(self, handle):
        """SIGKILL the program and wait for it: its last events (Output, then Exited), returned here, not by `events()`."""
        raise NotImplementedError

    def fileno(self):
        """A file descriptor readable when `events()` has something, or None."""
        raise NotImplementedError

    def events(self):
        """What happened since the last call (Output and Exited events, in order); never blocks."""
        raise NotImplementedError

    def figures(self, handle):
        """(cpu_percent since the last ask, rss in bytes), or (None, None) when unknown."""
        return None, None

    def record(self, handle):
        """A JSON-able record of a running program, for `stop_leftovers` after a crash of the controller."""
        raise NotImplementedError

    def stop_leftovers(self, records):
        """Stop programs a previous run controller left running ({name: record}); what was stopped."""
        raise NotImplementedError

    def reap_orphans(self):
        """Collect processes our programs left behind when they exited; how many were killed."""
        return 0

    def close(self):
        """Release what the backend holds; programs must have been stopped or killed before."""
