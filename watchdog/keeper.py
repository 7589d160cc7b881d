"""Keeps one command alive by its pid file: any command that writes and touches one (`run.py` keeps the
experiment's server and its run controller so, each under a watchdog of its own).

Starts the command in its own process group and restarts it when it exits (woken
by SIGCHLD, never by a polling sleep), or when the pid file it must touch goes
stale, names another process, or holds garbage (a hang). A child that had come up
(it wrote its pid file) is restarted at once; a hung one is killed (SIGKILL) and
replaced; failed starts back off from 100 ms;
too many restarts within a window end the watchdog with an error. With a standby (for a command
that can wait as one: the server), a copy of the command is started ahead and told to take over
when the one serving is gone, instead of starting anew; a new standby follows. One watchdog per pid
file (a lock beside it). Reads the pid file only; must not import the internals of what it keeps
(the bus, the client library, the supervision, the run control).
"""

import fcntl
import logging
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from runcontrol import pidfile, process
from runcontrol.errors import RunControlError
from runcontrol.restarts import Backoff, RestartWindow
from runcontrol.signals import SignalWakeup
from watchdog.standby import StandbyProcess

log = logging.getLogger("watchdog")

DEFAULT_STALE_AFTER_S = 30.0
DEFAULT_GRACE_S = 5.0
# A command that has not written its pid file yet is starting: under load its imports alone can take seconds,
# so it is given this long (or --stale-after, if longer) before it counts as hung.
DEFAULT_START_WITHIN_S = 30.0
DEFAULT_MAX_RESTARTS = 5
DEFAULT_WINDOW_S = 30.0
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 3.0
CHECK_INTERVAL_S = 1.0
# A standby is started this long after the command (its imports would take the CPU the clients need to register
# again), and again after each failure of its own, the delay doubling up to STANDBY_MAX_S.
STANDBY_DELAY_S = 0.5
STANDBY_MAX_S = 30.0


class WatchdogError(RunControlError):
    """The watchdog cannot or will not go on; the message says why."""


class Keeper:
    def __init__(self, argv, pidfile_path, stale_after_s=DEFAULT_STALE_AFTER_S, grace_s=DEFAULT_GRACE_S,
                 max_restarts=DEFAULT_MAX_RESTARTS, window_s=DEFAULT_WINDOW_S, standby=False,
                 start_within_s=DEFAULT_START_WITHIN_S):
        self.argv = list(argv)
        self.pidfile = Path(pidfile_path)
        self.lockfile = self.pidfile.with_name(self.pidfile.name + ".lock")
        self.stale_after_s = stale_after_s
        self.start_within_s = max(start_within_s, stale_after_s)
        self.grace_s = grace_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.check_interval_s = min(CHECK_INTERVAL_S, stale_after_s / 4)
        self.child = None
        self.last_pid = None
        self.replaced_pid = None     # the one before the child: its last touch of the pid file may look fresh
        self.started_wall = 0.0
        self.started_mono = 0.0
        self.restarts = RestartWindow(max_restarts, window_s)
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        self.restart_at = None
        self.keeps_standby = standby
        self.standby = None          # a StandbyProcess
        self.standby_at = None       # when to start the next one
        self.standby_backoff = Backoff(STANDBY_DELAY_S, STANDBY_MAX_S)
        self._lock_fd = None
        self._wakeup = None

    # --- one watchdog per pid file ---------------------------------------------------

    def lock(self):
        """Hold the lock file beside the pid file, or raise naming the watchdog that does."""
        try:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WatchdogError(f"cannot create the lock file {self.lockfile}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise WatchdogError(f"another watchdog (pid {holder}) already keeps {self.pidfile} "
                                f"(lock {self.lockfile})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def check_leftover(self):
        """A pid file left behind is taken over, unless a live copy of our command holds it."""
        pid = pidfile.read(self.pidfile)
        if pid is None:
            if self.pidfile.exists():
                log.warning("pid file %s holds no valid pid: taking it over", self.pidfile)
            return
        cmdline = process.command_line(pid)
        if cmdline is None:
            log.info("pid file %s names pid %d, which is dead: taking it over", self.pidfile, pid)
            return
        if cmdline and cmdline[1:] == self.argv[1:]:
            raise WatchdogError(f"pid file {self.pidfile} names pid {pid}, a live {' '.join(cmdline[:3])} ... "
                                "started without this watchdog: stop it first")
        log.warning("pid file %s names live pid %d (%s), which is not the command kept: taking the file over, "
                    "never signalling that process", self.pidfile, pid, " ".join(cmdline[:3]) or "unknown")

    # --- the loop ------------------------------------------------------------------------

    def keep(self):
        """Keep the command alive until SIGTERM or SIGINT (returns 0) or a crash loop (raises)."""
        self.lock()
        self.check_leftover()
        self._wakeup = SignalWakeup(wake_only=(signal.SIGCHLD,))
        try:
            self._start()
            while self._wakeup.stop_signal is None:
                self._wait()
                if self._wakeup.stop_signal is not None:
                    break
                self._reap()
                self._reap_standby()
                if self.child is None and self.restart_at is not None and time.monotonic() >= self.restart_at:
                    self._start()
                if self.child is not None:
                    self._check_health()
                self._prepare_standby()
            log.info("stopping on %s", signal.Signals(self._wakeup.stop_signal).name)
            return 0
        finally:
            self._stop_standby()
            self._stop_child("the watchdog is stopping")
            if self.last_pid is not None:
                pidfile.remove(self.pidfile, self.last_pid)
            self._wakeup.close()

    def _wait(self):
        now = time.monotonic()
        deadline = now + self.check_interval_s
        if self.child is None and self.restart_at is not None:
            deadline = min(deadline, self.restart_at)
        if self.standby_at is not None:
            deadline = min(deadline, self.standby_at)
        if self.child is not None and self.child.poll() is not None:
            return  # exited between checks: no need to sleep
        heard = [self._wakeup]
        if self.standby is not None and not self.standby.heard_all:
            heard.append(self.standby)
        readable, _, _ = select.select(heard, [], [], max(0.0, deadline - now))
        self._wakeup.drain()
        if self.standby is not None and self.standby in readable and self.standby.read():
            log.info("standby pid %d ready", self.standby.pid)
            self.standby_backoff.reset()

    def _start(self):
        """The command serving again: the standby told to take over, or else started anew."""
        self.restart_at = None
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.child = self._promote_standby() or self._spawn()
        self.replaced_pid, self.last_pid = self.last_pid, self.child.pid
        if self.keeps_standby and self.standby is None and self.standby_at is None:
            self.standby_at = self.started_mono + STANDBY_DELAY_S

    def _spawn(self):
        try:
            child = subprocess.Popen(self.argv, start_new_session=True)
        except OSError as exc:
            raise WatchdogError(f"cannot start {self.argv[0]!r}: {exc.strerror}") from None
        log.info("started pid %d: %s", child.pid, " ".join(self.argv))
        return child

    # --- the standby ---------------------------------------------------------------------------

    def _promote_standby(self):
        """The standby's Popen, told to take over (the one it replaces has been reaped); None without one."""
        standby, self.standby = self.standby, None
        if standby is None:
            return None
        child = standby.promote()
        if child is None:
            log.warning("standby pid %d %s: starting the command anew", standby.pid,
                        process.describe_returncode(standby.stop(self.grace_s)))
            return None
        log.info("standby pid %d takes over%s", child.pid, "" if standby.ready else " (still preparing)")
        return child

    def _prepare_standby(self):
        if self.standby_at is None or time.monotonic() < self.standby_at:
            return
        self.standby_at = None
        try:
            self.standby = StandbyProcess(self.argv)
        except OSError as exc:
            delay = self.standby_backoff.next_delay(good=False, came_up=False)
            log.warning("cannot start a standby: %s; trying again in %.1f s", exc.strerror, delay)
            self.standby_at = time.monotonic() + delay
            return
        log.info("standby pid %d started", self.standby.pid)

    def _reap_standby(self):
        """A standby that ended before its turn is replaced (later each time it keeps ending); not a restart."""
        standby = self.standby
        if standby is None or standby.proc.poll() is None:
            return
        self.standby = None
        standby.stop(self.grace_s)
        delay = self.standby_backoff.next_delay(good=False, came_up=False)
        log.warning("standby pid %d %s before its turn: another in %.1f s", standby.pid,
                    process.describe_returncode(standby.proc.returncode), delay)
        self.standby_at = time.monotonic() + delay

    def _stop_standby(self):
        self.standby_at = None
        if self.standby is not None:
            log.info("stopping standby pid %d", self.standby.pid)
            self.standby.stop(self.grace_s)
            self.standby = None

    # --- the command serving ----------------------------------------------------------------------

    def _reap(self):
        if self.child is None or self.child.poll() is None:
            return
        log.warning("pid %d %s after %.1f s", self.child.pid, process.describe_returncode(self.child.returncode),
                    time.monotonic() - self.started_mono)
        self._schedule_restart(self._came_up())

    def _came_up(self):
        """Whether the child wrote its pid file: a start that got that far was a good one."""
        try:
            fresh = self.pidfile.stat().st_mtime >= self.started_wall - 0.01
        except FileNotFoundError:
            return False
        return fresh and pidfile.read(self.pidfile) == self.child.pid

    def _schedule_restart(self, came_up):
        """Restart at once after a good start, with a growing delay after failed ones."""
        self.child = None
        now = time.monotonic()
        if self.restarts.record(now):
            raise WatchdogError(f"{' '.join(self.argv[:4])} ... needed {len(self.restarts)} restarts within "
                                f"{self.window_s:g} s (at most {self.max_restarts}): giving up")
        delay = self.backoff.next_delay(good=came_up, came_up=came_up)
        log.info("restarting in %.1f s (restart %d within %g s)", delay, len(self.restarts), self.window_s)
        self.restart_at = now + delay

    def _check_health(self):
        reason = self.unhealthy()
        if reason is None:
            return
        log.warning("pid %d is hung: %s; killing it", self.child.pid, reason)
        came_up = self._came_up()
        # A hung command is killed, not asked to stop: it could not act on the request in time, and what
        # it would do on an orderly stop (the run controller ends the run) is not what a replacement wants.
        process.signal_group(self.child.pid, signal.SIGKILL)
        self.child.wait()
        log.info("pid %d %s", self.child.pid, process.describe_returncode(self.child.returncode))
        self._schedule_restart(came_up)

    def unhealthy(self):
        """Why the running child counts as hung, or None while its pid file is fresh and its own."""
        try:
            mtime = self.pidfile.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        last_sign = self.started_wall
        if mtime is not None and mtime >= self.started_wall - 0.01:
            pid = pidfile.read(self.pidfile)
            if pid is None:
                return f"pid file {self.pidfile} holds garbage"
            if pid == self.child.pid:
                last_sign = mtime
            # Naming the predecessor, it is the file that one touched just before it died: not written anew yet.
            elif pid != self.replaced_pid:
                return f"pid file {self.pidfile} names pid {pid}, not the server's {self.child.pid}"
        silent_s = time.time() - last_sign
        if last_sign == self.started_wall:
            if silent_s > self.start_within_s:
                return (f"pid file {self.pidfile} not written since the start for {silent_s:.1f} s "
                        f"(must be within {self.start_within_s:g} s)")
        elif silent_s > self.stale_after_s:
            return f"pid file {self.pidfile} not touched for {silent_s:.1f} s (stale after {self.stale_after_s:g} s)"
        return None

    def _stop_child(self, reason):
        """SIGTERM to the child's group, SIGKILL after the grace; always reaped."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        log.info("stopping pid %d (%s): SIGTERM", child.pid, reason)
        _, killed = process.stop_group(child, self.grace_s)
        if killed:
            log.warning("pid %d was still running %.1f s after SIGTERM: killed", child.pid, self.grace_s)
        log.info("pid %d %s", child.pid, process.describe_returncode(child.returncode))
