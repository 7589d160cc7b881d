"""The acquisition loop: open -> configure -> start -> receive -> parse -> save, run-aware, and what it does when
the device misbehaves.

A `Source` is the device's link (open, configure, start, wait until it is lost,
stop, close); a `Writer` writes items to files; `parse(data)` turns a packet into
the items it completes, or raises `BadData`. `Acquisition.run_forever()` keeps the link
during a run: on `ConnectionError`, `TimeoutError` (no data for `silence_s`) or
`OSError` it reconnects with a growing delay, configures and starts again, at
most `tries` times in a row before it gives up (`GaveUp`: its receiver exits
non-zero and the supervisor's restart policy takes over). `feed(data)` takes
the packets: only in RUN; invalid data is logged, kept in a side file for
trouble shooting (`bad.bin` in the run's folder), counted, and the next frame
taken. `feed_batch(batch)` takes a receiver's batch of packets the same way,
through `parse_batch(batch)` -> (items, [(packet, why) of the invalid ones]); a
reader gives the one of `parse` and `parse_batch` it feeds. Items are written
off the event loop (`clients.kit.spool`: a thread behind a queue of
`write_queue` items; a full queue holds the loop until there is room, counted as
`writer_waits`; an item that could not be written is logged and counted,
`unwritten`). Files go into `<data>/<program>/run_NNNNNN/`, `per_file` items
each, and every file is closed and complete when the run ends, on `stop`,
SIGTERM or Ctrl-C, every queued item written first; the run's counters (files,
acquisitions, bytes, resyncs, reconnects, writer_waits, unwritten, and the
reader's own from `more_counters`) and each file closed (`files_written`: path,
size, SHA-256, items) are written beside them (`run.json`) and returned by
`end()`. A file's size and SHA-256 are those of the bytes its writer wrote, as
it wrote them (`HashedFile`, returned by `Writer.close`): a file is read back
only when its writer cannot tell. A reader restarted into a run it took part in
goes on from that record, and counts the items of the files the record does
not cover (open at a crash) from the files themselves (`Writer.count`; their
SHA-256 read back). Knows nothing of any device's or file's format.
"""

import asyncio
import hashlib
import json
import logging
import time

from clients.kit.spool import SIZE as SPOOL_SIZE, Spool
from runcontrol.restarts import Backoff

log = logging.getLogger("clients.kit")

TRIES = 5
BACKOFF = (0.2, 5.0, 2.0)
BAD_KEPT_BYTES = 1 << 20   # of invalid data copied to the side file per run


class BadData(ValueError):
    """Not data of the device's format; the text says why."""


class GaveUp(RuntimeError):
    """The device could not be brought back within the tries."""


class Source:
    """The link to a device. Each step raises ConnectionError, TimeoutError or OSError when it fails."""

    async def open(self):
        raise NotImplementedError

    async def configure(self, settings):
        raise NotImplementedError

    async def start(self):
        raise NotImplementedError

    async def lost(self):
        """Return (or raise ConnectionError) when the link is lost; never while it holds."""
        raise NotImplementedError

    async def stop(self):
        """End the acquisition and close the link; must not raise."""
        raise NotImplementedError


class Writer:
    """Items into files: `open(path, run)`, `write(item)` -> bytes written, `close()` -> (size, sha256) of the file
    as written (a `HashedFile`'s), or None when this writer cannot tell (the file is read back then); every file
    complete after each. `count(path)`: what an existing file holds."""

    suffix = ".dat"

    def open(self, path, run):
        raise NotImplementedError

    def write(self, item):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    def count(self, path):
        """(items, bytes) in the file at `path`, as `write` counted them; None when this writer cannot tell (the
        run's record is trusted then)."""
        return None


class HashedFile:
    """A binary file written through in order, every byte also into a SHA-256 and a size: the file as it was
    written, for its description, without reading it back. Only for files written from their start and never
    sought in: the digest is of the bytes in the order they were given."""

    def __init__(self, out):
        self.out = out
        self.size = 0
        self._digest = hashlib.sha256()

    def write(self, data):
        data = memoryview(data)   # an array's size in bytes, not in items
        written = self.out.write(data)
        self._digest.update(data)
        self.size += data.nbytes
        return written

    def flush(self):
        self.out.flush()

    def close(self):
        """Close the file; (size, sha256) of what was written."""
        self.out.close()
        return self.size, self._digest.hexdigest()


class RunCounters:
    FIELDS = ("files", "acquisitions", "bytes", "resyncs", "reconnects", "ignored", "writer_waits", "unwritten")

    def __init__(self, run):
        self.run = run
        for field in self.FIELDS:
            setattr(self, field, 0)
        self.written = []   # each closed file: {"path", "size", "sha256", "images"}

    def record(self):
        return {"run": self.run, **{field: getattr(self, field) for field in self.FIELDS},
                "files_written": list(self.written)}   # a copy: the writer's thread appends to it


def describe_file(path, images, written=None):
    """A closed file for the run's record: where, how big, its SHA-256, how many items. `written`: (size, sha256) as
    its writer wrote it; without it (a file found after a crash, a writer that cannot tell) the file is read back."""
    if written is None:
        digest = hashlib.sha256()
        with open(path, "rb") as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
        written = path.stat().st_size, digest.hexdigest()
    size, sha256 = written
    return {"path": str(path), "size": size, "sha256": sha256, "images": images}


class Acquisition:
    def __init__(self, source, writer, parse, data_folder, per_file=10, tries=TRIES, silence_s=2.0,
                 backoff=BACKOFF, more_counters=dict, parse_batch=None, write_queue=SPOOL_SIZE):
        self.source, self.writer, self.parse, self.parse_batch = source, writer, parse, parse_batch
        self.spool = Spool(self._store, write_queue)   # the files are written in its thread
        self.more_counters = more_counters   # the reader's own counters of the run, for its record
        self.data_folder = data_folder
        self.per_file, self.tries, self.silence_s = per_file, tries, silence_s
        self.backoff = Backoff(*backoff)
        self.run = None            # RunCounters while in RUN
        self.settings = {}
        self.folder = None
        self.in_file = 0           # items in the open file
        self.path = None
        self.file_open = False
        self.last_data = 0.0
        self.failures = 0
        self.linked = False        # the link was opened, configured and started, and has not failed since
        self.in_run = asyncio.Event()
        self.changed = asyncio.Event()   # a run began or ended: the link follows
        self.bad_kept = 0
        self.last_error = None

    # --- the run, from the receiver's run hooks (in the loop's thread) ------------------------------

    def begin(self, run, settings):
        """Take data for `run`; a reader that joins a run it took part in before (it was restarted) goes on
        counting from that run's record and after its files. Returns that record ({} for a new run): the reader's
        own counters go on from it."""
        self.spool.drain()   # what is still being written belongs to the files of the run before
        self.run = RunCounters(run)
        self.settings = dict(settings)
        self.folder = self.data_folder / f"run_{run:06d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        before = self._resume()
        self.failures, self.bad_kept = 0, 0
        self.last_data = time.monotonic()
        self.in_run.set()
        self.changed.set()
        return before

    def _resume(self):
        try:
            before = json.loads((self.folder / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        for field in RunCounters.FIELDS:
            if isinstance(before.get(field), int):
                setattr(self.run, field, before[field])
        if isinstance(before.get("files_written"), list):
            self.run.written = [f for f in before["files_written"] if isinstance(f, dict)]
        self._count_unrecorded()
        return before

    def _count_unrecorded(self):
        """Add the items of the files the record does not cover: it was written as its last file closed, so it
        counts files 1..`files`; one opened after it was written (open at a crash) holds items it never counted."""
        numbered = {}
        for path in self.folder.glob(f"file_*{self.writer.suffix}"):
            digits = path.name[len("file_"):-len(self.writer.suffix)]
            if digits.isascii() and digits.isdigit():
                numbered[int(digits)] = path
        unrecorded = [numbered[number] for number in sorted(numbered) if number > self.run.files]
        held = [self.writer.count(path) for path in unrecorded]
        if unrecorded and None not in held:
            items = sum(items for items, _ in held)
            self.run.acquisitions += items
            self.run.bytes += sum(size for _, size in held)
            self.run.written += [describe_file(path, images) for path, (images, _) in zip(unrecorded, held)]
            log.info("run %d: %d acquisitions in %d files after its record", self.run.run, items, len(unrecorded))
        self.run.files = max([self.run.files, *numbered])

    def record(self):
        """The run's counters so far: the kit's and the reader's own."""
        return {**self.run.record(), **self.more_counters()}

    def end(self):
        """Close what is open; the run's record (also written as run.json in its folder)."""
        if self.run is None:
            return None
        self.in_run.clear()
        self.changed.set()
        self.spool.drain()
        self._close_file()
        record = self._write_record()
        self.run = None
        return record

    # --- packets, from the receiver --------------------------------------------------------------

    def feed(self, data):
        if self.run is None:
            return
        self.last_data = time.monotonic()
        try:
            items = self.parse(data)
        except BadData as exc:
            self._invalid(data, exc)
            return
        if self.linked:
            self.failures = 0  # data flows over a link that holds: it is good again (not data from before it fell)
        for item in items:
            self.save(item)

    def feed_batch(self, batch):
        """The packets of a receiver's batch, as `feed` takes each."""
        if self.run is None:
            return
        self.last_data = time.monotonic()
        items, invalid = self.parse_batch(batch)
        for data, why in invalid:
            self._invalid(data, why)
        if self.linked and len(invalid) < len(batch):
            self.failures = 0
        for item in items:
            self.save(item)

    def _invalid(self, data, why):
        self.run.resyncs += 1
        log.warning("invalid data (%d bytes): %s; taking the next frame", len(data), why)
        self._keep_bad(data)

    def save(self, item):
        """Queue `item` for the writer's thread (waiting for room, counted, when its queue is full)."""
        if self.spool.put(item):
            self.run.writer_waits += 1

    def _store(self, item):
        """Write `item` into the open file (opened if need be), in the writer's thread."""
        try:
            self._write(item)
        except Exception:  # the thread goes on with the next item: this one is counted, with why in the log
            self.run.unwritten += 1
            log.exception("run %d: an acquisition could not be written to %s", self.run.run, self.path)

    def _write(self, item):
        if not self.file_open:
            self.run.files += 1
            self.path = self.folder / f"file_{self.run.files:04d}{self.writer.suffix}"
            self.writer.open(self.path, self.run.run)
            self.file_open, self.in_file = True, 0
        self.run.bytes += self.writer.write(item)
        self.run.acquisitions += 1
        self.in_file += 1
        if self.in_file >= self.per_file:
            self._close_file()

    def _close_file(self):
        if self.file_open:
            written = self.writer.close()
            self.file_open = False
            self.run.written.append(describe_file(self.path, self.in_file, written))
            log.info("wrote %s: %d acquisitions", self.path, self.in_file)
            self._write_record()

    def _write_record(self):
        """The run's counters beside its files (after each file; a restart counts the open file's items from it)."""
        record = self.record()
        tmp = self.folder / "run.json.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(self.folder / "run.json")
        return record

    def _keep_bad(self, data):
        if self.bad_kept + len(data) > BAD_KEPT_BYTES:
            return
        self.bad_kept += len(data)
        with open(self.folder / "bad.bin", "ab") as side:
            side.write(len(data).to_bytes(4, "little") + bytes(data))

    # --- the link -----------------------------------------------------------------------------------

    async def run_forever(self, stopping):
        """Keep the link in every run until `stopping` is set; GaveUp after `tries` failures in a row."""
        while not stopping.is_set():
            await first(self.in_run.wait(), stopping.wait())
            if stopping.is_set():
                break
            try:
                await self._session(stopping)
            except (ConnectionError, TimeoutError, OSError) as exc:
                await self.source.stop()
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.failures > self.tries:
                    raise GaveUp(f"the device could not be brought back in {self.tries} tries: "
                                 f"{self.last_error}") from None
                if self.run is not None:
                    self.run.reconnects += 1
                delay = self.backoff.next_delay(False, came_up=False)
                log.warning("%s; reconnecting in %.2g s (try %d of %d)", self.last_error, delay, self.failures,
                            self.tries)
                await first(asyncio.sleep(delay), stopping.wait())
            else:
                self.backoff.reset()
        await self.source.stop()

    async def _session(self, stopping):
        """Open, configure, start; then hold until the run ends (returns) or the link fails (raises)."""
        self.changed.clear()
        await self.source.open()
        await self.source.configure(self.settings)
        await self.source.start()
        self.last_data = time.monotonic()
        self.linked = True
        lost = asyncio.ensure_future(self.source.lost())
        try:
            while self.in_run.is_set() and not stopping.is_set():
                await first(asyncio.shield(lost), self.changed.wait(), stopping.wait(),
                            timeout=self.silence_s / 4)
                self.changed.clear()
                if lost.done():
                    lost.result()  # raises what lost the link
                    raise ConnectionError("the device closed the link")
                if self.in_run.is_set() and time.monotonic() - self.last_data > self.silence_s:
                    raise TimeoutError(f"no data for {self.silence_s:g} s")
        finally:
            self.linked = False
            lost.cancel()
            await self.source.stop()


async def first(*aws, timeout=None):
    """Wait until the first of `aws` is done (or `timeout`); cancel the rest (not a shielded one's inside)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
