"""The hosts of an experiment as the supervisor sees them: one backend each, and what is known of each.

Owns the backends by host name, waiting on their events together (one epoll
over their descriptors), whether a host can be reached, what its agent tells
(a process changed state, a probe failed, its figures), saying when a host is
lost or back, and what a crashed run controller left running there. Must not
decide what starts or stops, nor parse JSON or touch the bus.
"""

import logging
import select

from runcontrol.supervision.backends.local import LocalBackend

log = logging.getLogger("runcontrol.supervision.supervisor")


class Hosts:
    """`backends` maps host names to backends; `programs` is the supervisor's (name -> Program, read only)."""

    def __init__(self, backends, programs, emit):
        self.backends = backends
        self.programs = programs
        self.emit = emit
        self._epoll = select.epoll()
        for backend in backends.values():
            if backend.fileno() is not None:
                self._epoll.register(backend.fileno(), select.EPOLLIN)

    def __contains__(self, host):
        return host in self.backends

    def backend(self, host):
        return self.backends[host]

    def unreachable(self, host):
        """Whether `host` has a backend that cannot reach it now."""
        backend = self.backends.get(host)
        return backend is not None and not backend.reachable

    # --- events ----------------------------------------------------------------------------------

    def fileno(self):
        return self._epoll.fileno()

    def events(self, timeout):
        """Every backend's events, once one has some within `timeout` seconds; else none."""
        if self._epoll.poll(timeout):
            for backend in self.backends.values():
                yield from backend.events()

    def changed(self, event):
        """A host lost (its programs UNKNOWN, none started there until it is back: an alarm) or back."""
        mine = self._programs_on(event.host)
        if event.problem:
            log.error("host %s cannot be reached: %s; its programs are UNKNOWN", event.host, event.problem)
            self.emit("host_unreachable", host=event.host, error=event.problem, programs=mine)
        else:
            log.warning("host %s is back: its programs are held against what its supervisord reports", event.host)
            self.emit("host_reachable", host=event.host, programs=mine)

    def _programs_on(self, host):
        return [p.name for p in self.programs.values() if p.spec.host == host and not p.retired]

    # --- what a host's agent tells ----------------------------------------------------------------

    def look(self, host, hint=None):
        """Someone on `host` (its agent) said a process changed state there (`hint`: what it said)."""
        backend = self.backends.get(host)
        if backend is not None:
            backend.look(hint if isinstance(hint, dict) else None)

    def probe_failed(self, host, hint):
        """The agent on `host` says a program's liveness probe failed (`hint`: program, pid, reason)."""
        backend = self.backends.get(host)
        if backend is not None and isinstance(hint, dict):
            backend.probe_failed(hint)

    def take_figures(self, host, figures):
        backend = self.backends.get(host)
        if backend is not None:
            backend.take_figures(figures)

    def describe(self):
        """Each host but this one: reachable or why not, its agent's last figures, its programs."""
        return {name: {"reachable": backend.reachable, "problem": backend.problem or None,
                       "figures": getattr(backend, "figures_seen", None) or None,
                       "programs": self._programs_on(name)}
                for name, backend in self.backends.items() if name != LocalBackend.host}

    # --- what runs, for a successor ---------------------------------------------------------------

    def records(self):
        """{program: record} of what runs now, for `stop_leftovers` after a crash of the controller."""
        return {p.name: self.backends[p.spec.host].record(p.proc) for p in self.programs.values()
                if p.proc is not None}

    def stop_leftovers(self, records):
        """Stop what a previous run controller left running (its `records()`); what was stopped."""
        by_host = {}
        for name, record in records.items():
            host = record.get("host", LocalBackend.host) if isinstance(record, dict) else LocalBackend.host
            by_host.setdefault(host, {})[name] = record
        for host, mine in by_host.items():  # what we will start there again is adopted, not stopped
            if self.backends.get(host) is not None and self.backends[host].adopts:
                for name in [n for n in mine if n in self.programs and self.programs[n].spec.host == host]:
                    del mine[name]
        return [line for host, mine in by_host.items() if host in self.backends and mine
                for line in self.backends[host].stop_leftovers(mine)]

    def reap_orphans(self):
        return sum(backend.reap_orphans() for backend in self.backends.values())

    def close(self):
        for backend in self.backends.values():
            backend.close()
        self._epoll.close()
