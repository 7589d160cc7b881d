"""Pid files: written atomically, touched to prove liveness, read defensively.

The server owns writing and touching its file; the watchdog only reads it. A
pid file holds the pid in decimal on its first line (PROTOCOL.md, "Pid file").
"""

import os
from pathlib import Path


def write(path, pid=None):
    """Write `pid` (default: ours) to `path` atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(b"%d\n" % (pid or os.getpid()))   # bytes: no codec to look up (a standby takes over faster)
    os.replace(temp, path)


def touch(path):
    """Refresh the modification time; False when the file is gone (someone removed it)."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def read(path):
    """The pid named by the file, or None when it is missing or holds no valid pid."""
    try:
        pid = int(Path(path).read_bytes().split(b"\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def remove(path, pid=None):
    """Remove the file if it still names `pid` (default: ours), so we never remove a successor's."""
    if read(path) == (pid or os.getpid()):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
