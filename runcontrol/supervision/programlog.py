"""A program's log file: its output, each line stamped in UTC, rotated by size.

Owns `<logs>/<program>.log` and its rotated copies (`.1` newest ... `.N` oldest),
and the last lines kept in memory for exit reports. Must not read pipes or
know about processes: the supervisor hands it bytes.
"""

import collections
import os
import time
from pathlib import Path

TAIL_LINES = 20
MAX_LINE_BYTES = 64 * 1024  # a program that never writes a newline still gets its output logged


def utc_prefix(now=None):
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z "


class ProgramLog:
    def __init__(self, path, max_bytes, keep):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self._partial = b""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def feed(self, data):
        """Write the complete lines in `data`; keep an unfinished last line for later."""
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:
            lines.append(self._partial)
            self._partial = b""
        if lines:
            self._write_lines(lines)

    def note(self, text):
        """A line of the supervisor's own (start, exit), in the same file."""
        self.finish()
        self._write_lines([f"[orbit] {text}".encode()])

    def finish(self):
        """Write out an unfinished last line (the program has exited)."""
        if self._partial:
            self._write_lines([self._partial])
            self._partial = b""

    def _write_lines(self, lines):
        prefix = utc_prefix().encode()
        chunk = []
        for line in lines:
            stamped = prefix + line + b"\n"
            if self._size and self._size + len(stamped) > self.max_bytes:
                self._file.write(b"".join(chunk))
                chunk = []
                self._rotate()
            chunk.append(stamped)
            self._size += len(stamped)
        self._file.write(b"".join(chunk))
        self._file.flush()
        self.tail.extend(line.decode("utf-8", "replace") for line in lines[-TAIL_LINES:])

    def _rotate(self):
        self._file.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for number in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")
        self._size = 0

    def last_lines(self, count=10):
        return list(self.tail)[-count:]

    def close(self):
        self.finish()
        self._file.close()
