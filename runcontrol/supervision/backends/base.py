"""The supervision backend interface: what the supervisor asks of the place where programs run.

A backend spawns a program's processes, runs their liveness probes (on their
host), signals them, kills them, tells the supervisor what they wrote, when they
exited and when a probe says one hangs (as events it hands out from
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
    process.UNNAMED_SIGNAL where the host does not say which); or it could not be started, and `error` says why;
    or, `lost`, it was to be killed but its host cannot be reached: it is left to that host, counted as ended."""
    handle: object
    code: object
    signal: object
    error: str = ""
    lost: bool = False


@dataclass(frozen=True)
class Started:
    """A program's process runs, with `pid`, since `age_s` seconds: told by a backend that learns it after `spawn`
    returned; `adopted` when it was found running already (started before this run controller)."""
    handle: object
    pid: int
    age_s: float
    adopted: bool = False


@dataclass(frozen=True)
class Hung:
    """A program's liveness probe failed as many times in a row as its spec allows: `reason` says how."""
    handle: object
    reason: str


@dataclass(frozen=True)
class HostChanged:
    """The host of a backend became reachable (`problem` empty) or not (`problem` says why)."""
    host: str
    problem: str = ""


class Backend:
    """Where programs run. `host` is the name programs use for it in the experiment (`local` here)."""

    host = None
    adopts = False  # a start of a program that runs already there takes it over (Started with adopted)
    problem = ""   # why the host cannot be reached now; empty while it can

    @property
    def reachable(self):
        return not self.problem

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
        """What happened since the last call (Output, Started, Exited, Hung and HostChanged events, in order);
        never blocks."""
        raise NotImplementedError

    def figures(self, handle):
        """(cpu_percent since the last ask, rss in bytes), or (None, None) when unknown."""
        return None, None

    def look(self, hint=None):
        """Someone on the host said a process changed state (`hint`: what it said, e.g. `pid` and `state`):
        look at once instead of at the next poll."""

    def probe_failed(self, hint):
        """The host's agent says a program's liveness probe failed (`hint`: `program`, `pid`, `reason`): a Hung
        event follows if that process is still the program's."""

    def take_figures(self, figures):
        """Figures of the host and its programs, as its agent published them."""

    def record(self, handle):
        """A JSON-able record of a running program, for `stop_leftovers` after a crash of the controller."""
        raise NotImplementedError

    def stop_leftovers(self, records):
        """Stop programs a previous run controller left running ({name: record}); what was stopped.
        A backend that `adopts` keeps those its successor will find running when it starts them."""
        raise NotImplementedError

    def reap_orphans(self):
        """Collect processes our programs left behind when they exited; how many were killed."""
        return 0

    def close(self):
        """Release what the backend holds; programs must have been stopped or killed before."""
