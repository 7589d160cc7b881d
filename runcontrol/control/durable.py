"""Files the run controller must not lose in a crash: whole files replaced at once, and JSON-lines logs.

Every write is flushed and fsynced before it returns; a reader of a log skips
a last line a crash cut short. Used by the run book, the alarm book and the
settings book. Must not send messages.
"""

import json
import os


def write_durably(path, text):
    """Replace `path` with `text`: temporary file, fsync, rename, fsync of the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    sync_folder(path.parent)


def sync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_line(path, entry):
    """Append `entry` as one JSON line to the log at `path`, durably."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry, default=str) + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_lines(path):
    """Every entry of the JSON-lines log at `path`, oldest first; none when there is no log yet."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue   # a line cut by a crash mid-write
    return entries
