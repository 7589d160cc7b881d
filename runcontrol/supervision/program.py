"""One program as the supervisor sees it: its spec, its state, its process, and when to restart it.

Owns the record of one program (state, handle of its running process, restart
count, last exit, its one timer's handle) and the restart decisions that concern it alone: the
policy, the backoff and the restart intensity. State changes go through `set`,
which checks the transition table. Must not start or signal anything.
"""

import collections
import logging

from runcontrol import process
from runcontrol.restarts import Backoff, RestartWindow
from runcontrol.states import ChildState as S, check_transition

log = logging.getLogger(__name__)

STABLE_S = 1.0         # a run this long (and as long as the last backoff) resets the backoff
OLD_PIDS_KEPT = 16


class Program:
    """The supervisor's record of one program."""

    def __init__(self, spec, program_log):
        self.spec = spec
        self.log = program_log
        self.state = S.STOPPED
        self.proc = None           # the backend's handle while it runs
        self.wanted = False        # start it (again) when its dependencies allow
        self.retired = False       # removed by a reload: forget it once stopped
        self.next_spec = None      # changed by a reload: use it at the next start
        self.registered = False
        self.missing_since = None  # running, but not in the server's registry since then
        self.started_at = None
        self.restarts = 0
        self.timer = None          # its one timer (a handle in the supervisor's timer heap), or None
        self.kill_reason = None    # why we killed it (a hang), so its exit counts as a failure
        self.last_exit = None
        self.old_pids = collections.deque(maxlen=OLD_PIDS_KEPT)
        self._reset_intensity()

    def _reset_intensity(self):
        backoff = self.spec.backoff
        self.backoff = Backoff(backoff.initial_s, backoff.max_s, backoff.factor)
        self.window = RestartWindow(self.spec.max_restarts, self.spec.restart_window_s)

    @property
    def name(self):
        return self.spec.name

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def set(self, new):
        """The one way a program's state changes: checked against the transition table, logged."""
        old = self.state
        self.state = check_transition(old, new)
        log.info("%s %s -> %s", self.name, old.value, new.value)

    def wants_restart(self, clean):
        return self.wanted and (self.spec.restart == "always" or (self.spec.restart == "on-failure" and not clean))

    def next_delay(self, was_running, uptime):
        """No delay after a good run; then initial, initial*factor, ... up to max while it keeps failing."""
        good = was_running and uptime >= max(STABLE_S, self.backoff.delay_s)
        return self.backoff.next_delay(good, came_up=was_running)

    def clear_failures(self):
        """An operator's start, or a new spec: the restart intensity and backoff start afresh."""
        self.window.clear()
        self.backoff.reset()

    def take_next_spec(self):
        self.spec, self.next_spec = self.next_spec, None
        self._reset_intensity()

    def fatal_text(self):
        return (f"needed {len(self.window)} restarts within {self.spec.restart_window_s:g} s "
                f"(at most {self.spec.max_restarts}): no more restarts")

    def cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def exited(self, code, sig, uptime, at):
        """Record an exit; returns how it ended, for logs and events."""
        self.proc = None
        self.cancel_timer()
        self.registered = False
        self.missing_since = None
        self.last_exit = {"code": code, "signal": process.signal_name(sig), "at": at,
                          "uptime": round(uptime, 3), "reason": self.kill_reason}
        return process.describe_exit(code, sig)


def describe_exit(last_exit):
    """A program's last exit (`Program.last_exit`) in words."""
    if not last_exit:
        return "no exit recorded"
    if last_exit.get("fatal"):
        return last_exit["fatal"]
    if last_exit.get("error"):
        return last_exit["error"]
    how = process.describe_exit(last_exit.get("code"), last_exit.get("signal"))
    return how + (f" ({last_exit['reason']})" if last_exit.get("reason") else "")
