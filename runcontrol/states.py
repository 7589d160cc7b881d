"""Program states and the transitions allowed between them (supervisor's state machine).

Imports nothing but the standard library.
"""

import enum


class ChildState(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"
    UNKNOWN = "UNKNOWN"  # said, never held: the host that runs it cannot be reached (its last known state is kept)


# STARTING -> EXITED: a one-shot program (restart never, or on-failure) that finished
# its work before it counted as up.
ALLOWED = {
    ChildState.STOPPED: {ChildState.STARTING},
    ChildState.STARTING: {ChildState.RUNNING, ChildState.BACKOFF, ChildState.STOPPING, ChildState.EXITED},
    ChildState.RUNNING: {ChildState.EXITED, ChildState.STOPPING},
    ChildState.BACKOFF: {ChildState.STARTING, ChildState.FATAL, ChildState.STOPPED},
    ChildState.STOPPING: {ChildState.STOPPED},
    ChildState.EXITED: {ChildState.STARTING, ChildState.BACKOFF, ChildState.STOPPED, ChildState.FATAL},
    ChildState.FATAL: {ChildState.STARTING, ChildState.STOPPED},
    ChildState.UNKNOWN: set(),
}


class IllegalTransition(Exception):
    """A transition the table does not allow: a bug in the caller, not a condition."""


def check_transition(current, new):
    """Return `new` if the table allows current -> new, else raise IllegalTransition."""
    if new not in ALLOWED[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not allowed")
    return new
