"""The reader of a skipper-CCD board (an LTA): a receiver with an acquisition loop, writing FITS images.

  python -m clients.sim.lta --name lta1 --board 127.0.0.1:7101 [--listen 127.0.0.1:0] [--per-file 10]
      [--tries 5] [--silence 2] [--window 1024] [--write-queue 8]

During a run it holds the board's control link (`clients.sim.board`), has it
stream to its UDP port, takes the packets in batches (all those its socket holds
at each wake-up), puts images together from them
(`clients.sim.ccdpackets`: each packet in its place whatever order it comes in,
an incomplete image kept open for late packets until the stream is `--window`
sequence numbers past it; duplicates, lost and late packets counted; garbled ones
skipped and kept in the side file), and writes each image as an extension of a
FITS file (`per_file` images a file) under `<paths.data>/<name>/run_NNNNNN/`,
with header keys RUN, BOARD, IMAGE, EXPTIME, NSAMP, MISSING, DATE-OBS, in a
thread of its own behind a queue of `--write-queue` images (full: the reader
waits, counted as `writer_waits`). What the socket's kernel buffer had no room
for is counted too (`kernel_dropped`, in the rates, `status` and the run's
record, beside the lost, duplicate and late packets). Its
settings `rows`, `cols`, `samples` and `seconds` (the exposure) configure the
board (frozen during a run); a run's parameters of the same names override them
for that run. A dropped link is reconnected; a board that does not come back within
`--tries` ends the reader with exit status 3; a stream started again in a run
(the board begins its images anew) first writes what was open. Commands: `status` (with the UDP address packets go to),
`rates`.
"""

import argparse
import asyncio
import collections
import json
import logging
import os
import sys
import time
import warnings

import numpy
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from clients.instrument import data_folder
from clients.kit.acquisition import Acquisition, GaveUp, HashedFile, Source, Writer
from clients.kit.receiver import Receiver
from runcontrol.client.busaccess import host_port
from clients.sim import ccdpackets
from runcontrol import logsetup
from runcontrol.errors import ConfigError, Refused

log = logging.getLogger("clients.sim.lta")

CONNECT_TIMEOUT_S = 2.0
FITS_BLOCK = 2880
CONVERTED = 1 << 19   # samples turned into FITS's order at a time
WRITE_QUEUE = 8       # images waiting for the writer: some 100 ms of a fast stream while it closes a file
DEFAULTS = {"rows": 64, "cols": 256, "samples": 1, "seconds": 0.0}
MAX_PIXELS = 4096 * 4096


class BoardLink(Source):
    """The board's control port: JSON lines, one answer each."""

    def __init__(self, address, udp_address, starting):
        self.address = address
        self.udp_address = udp_address   # a callable: where our UDP listener is
        self.starting = starting         # a callable: the stream begins anew
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(*self.address), CONNECT_TIMEOUT_S)

    async def _order(self, order):
        self.writer.write(json.dumps(order).encode() + b"\n")
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), CONNECT_TIMEOUT_S)
        if not line:
            raise ConnectionError(f"the board at {self.address[0]}:{self.address[1]} closed the link")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ConnectionError(f"the board refused {order['cmd']}: {answer.get('error')}")

    async def configure(self, settings):
        await self._order({"cmd": "configure", "rows": settings["rows"], "cols": settings["cols"],
                           "samples": settings["samples"], "exposure": settings["seconds"],
                           "target": list(self.udp_address())})

    async def start(self):
        self.starting()
        await self._order({"cmd": "start"})

    async def lost(self):
        while await self.reader.read(4096):
            pass
        raise ConnectionError(f"the board at {self.address[0]}:{self.address[1]} closed the link")

    async def stop(self):
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.write(b'{"cmd": "stop"}\n')
            writer.close()
        except (ConnectionError, RuntimeError):
            pass


class PixelPool:
    """The pixels of images written, used again for new images of the same size, and as many made ready when a run
    begins as can be on their way to the file at once: the kernel finds (and zeroes) a new image's memory page by page
    when it is first written, and a huge page at times only after tens of milliseconds of compaction, while packets
    wait. `take` in the loop's thread, `give` in the writer's."""

    def __init__(self, keep):
        self.keep = keep
        self.free = collections.deque(maxlen=keep)

    def prepare(self, rows, cols):
        """Have `keep` images of rows x cols ready, their memory found."""
        kept = [pixels for pixels in self.free if pixels.shape == (rows, cols)]
        self.free.clear()
        self.free.extend(kept)
        while len(self.free) < self.keep:
            pixels = numpy.empty((rows, cols), "<u2")
            pixels.fill(0)
            self.free.append(pixels)

    def take(self, rows, cols):
        """Pixels for an image of rows x cols, all zero."""
        while self.free:
            pixels = self.free.pop()
            if pixels.shape == (rows, cols):
                pixels.fill(0)
                return pixels
        return numpy.zeros((rows, cols), "<u2")

    def give(self, pixels):
        self.free.append(pixels)


class FitsWriter(Writer):
    """Each image an extension of the file, written whole (header, data, padding) before the next is begun: the file
    is complete after each. Pixels as FITS keeps unsigned 16-bit ones: big-endian signed, BZERO 32768. An image
    written, its pixels are handed to `written` (to be used again). `close` returns the file's size and SHA-256,
    taken from the bytes as they were written."""

    suffix = ".fits"

    def __init__(self, exposure, written=lambda pixels: None):
        self.exposure = exposure   # a callable: the run's exposure, seconds
        self.written = written
        self.path = None
        self.run = None
        self.out = None
        self._converted = numpy.empty(CONVERTED, ">u2")

    def open(self, path, run):
        self.path, self.run = path, run
        primary = fits.PrimaryHDU()
        primary.header["RUN"] = (run, "run number")
        partial = path.with_name(path.name + ".partial")
        # every byte through one HashedFile, in order (a primary without data is its header alone, as writeto writes
        # it): the file's SHA-256 without reading it back
        self.out = HashedFile(open(partial, "wb"))
        self.out.write(primary.header.tostring().encode("ascii"))
        self.out.flush()
        os.replace(partial, path)   # a reader killed meanwhile leaves no file, rather than an empty one

    def write(self, image):
        header = fits.Header([
            ("XTENSION", "IMAGE", "Image extension"), ("BITPIX", 16, "array data type"),
            ("NAXIS", 2, "number of array dimensions"), ("NAXIS1", image.cols), ("NAXIS2", image.rows),
            ("PCOUNT", 0, "number of parameters"), ("GCOUNT", 1, "number of groups"), ("BSCALE", 1),
            ("BZERO", 32768), ("RUN", self.run, "run number"), ("BOARD", image.board, "readout board id"),
            ("IMAGE", image.number, "image number in the board's stream"),
            ("EXPTIME", self.exposure(), "exposure, seconds"), ("NSAMP", image.samples, "skipper samples per pixel"),
            ("MISSING", image.missing, "packets of this image that never came"),
            ("DATE-OBS", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(image.started)))])
        self.out.write(header.tostring().encode("ascii"))
        pixels, converted = image.pixels.reshape(-1), self._converted
        for at in range(0, pixels.size, CONVERTED):
            part = converted[:min(CONVERTED, pixels.size - at)]
            numpy.bitwise_xor(pixels[at:at + part.size], 0x8000, out=part)   # -32768, in two's complement
            self.out.write(part)
        self.out.write(bytes(-image.pixels.nbytes % FITS_BLOCK))
        self.out.flush()
        self.written(image.pixels)
        return image.pixels.nbytes

    def close(self):
        written = self.out.close()
        self.path = self.out = None
        return written

    def count(self, path):
        """Images whose data is all in the file (a reader killed while appending may have torn the last one)."""
        size, images, data = path.stat().st_size, 0, 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)   # "may have been truncated": what this looks for
            try:
                with fits.open(path) as hdus:
                    for index in range(1, len(hdus)):
                        info, header = hdus.fileinfo(index), hdus[index].header
                        if info["datLoc"] + info["datSpan"] > size:
                            break
                        images += 1
                        data += header["NAXIS1"] * header["NAXIS2"] * abs(header["BITPIX"]) // 8
            except OSError as exc:
                log.warning("%s: %s; counted %d images in it", path, exc, images)
        return images, data


class CcdReader(Receiver):
    config_schema = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "rows": {"type": "integer", "minimum": 1, "maximum": 8192, "default": DEFAULTS["rows"],
                     "description": "rows read per image"},
            "cols": {"type": "integer", "minimum": 1, "maximum": 8192, "default": DEFAULTS["cols"],
                     "description": "columns read per image"},
            "samples": {"type": "integer", "minimum": 1, "maximum": 10000, "default": DEFAULTS["samples"],
                        "description": "skipper samples per pixel"},
            "seconds": {"type": "number", "minimum": 0, "maximum": 86400, "default": DEFAULTS["seconds"],
                        "description": "exposure before each readout, s"},
        },
    }

    def __init__(self, name, board, listen, folder, per_file, tries, silence_s, window, write_queue=WRITE_QUEUE,
                 **kwargs):
        super().__init__(name, meta={"participant": True, "board": "%s:%d" % board}, **kwargs)
        self.listen_udp(*listen, batches=True, max_size=ccdpackets.MAX_PACKET)
        self.window = window
        # as many as wait for the writer, the one it writes, the one being put together and one waiting for late packets
        self.pool = PixelPool(write_queue + 3)
        self.assembler = ccdpackets.Assembler(window, pixels=self.pool.take)
        self.settings = dict(DEFAULTS)
        link = BoardLink(board, lambda: self.addresses[0], self._stream_starts)
        writer = FitsWriter(lambda: self.settings["seconds"], written=self.pool.give)
        self.acquisition = Acquisition(link, writer, None, folder,
                                       per_file=per_file, tries=tries, silence_s=silence_s,
                                       more_counters=self._run_counts, parse_batch=self._parse_batch,
                                       write_queue=write_queue)
        self.last_record = None
        self._loss_seen = (0, 0)
        self._kernel_before = 0  # what the kernel dropped before this run (less what a record of it counted)
        self._streamed = False   # the board streamed in this run already

    def more_rates(self):
        """Packets lost, duplicated and late (in this run), the fraction lost in the last second, and the writer's
        queue."""
        lost, packets = self.assembler.lost, self.counters.packets
        lost_then, packets_then = self._loss_seen
        self._loss_seen = (lost, packets)
        new_lost = max(0, lost - lost_then)
        arrived = max(0, packets - packets_then)
        return {**self.assembler.counts(),
                "loss": round(new_lost / (new_lost + arrived), 6) if new_lost + arrived else 0.0,
                "writer_queue": self.acquisition.spool.depth()}

    def _run_counts(self):
        """The reader's own counters of the run, for its record: the assembler's and what the kernel dropped."""
        return {**self.assembler.counts(), "kernel_dropped": self.kernel_dropped() - self._kernel_before}

    def handle_batch(self, batch):
        self.acquisition.feed_batch(batch)

    def _parse_batch(self, batch):
        return self.assembler.add_batch(batch.slots(), batch.sizes())

    def on_begin(self, run):
        settings = {**self.config, **{k: v for k, v in run.params.items() if k in DEFAULTS}}
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in settings.values()) \
                or settings["rows"] * settings["cols"] > MAX_PIXELS or min(settings["rows"], settings["cols"]) < 1:
            raise Refused(f"rows, cols, samples, seconds must be numbers (rows x cols at most {MAX_PIXELS}): "
                          f"{settings}", "bad_params")
        self.settings = {k: int(v) if k != "seconds" else float(v) for k, v in settings.items()}
        before = self.acquisition.begin(run.number, self.settings)
        self.pool.prepare(self.settings["rows"], self.settings["cols"])
        self.assembler = ccdpackets.Assembler(self.window, counts=before, pixels=self.pool.take)   # counts go on
        self._loss_seen = (self.assembler.lost, self.counters.packets)
        earlier = before.get("kernel_dropped")
        self._kernel_before = self.kernel_dropped() - (earlier if isinstance(earlier, int) else 0)
        self._streamed = False
        return {"folder": str(self.acquisition.folder)}

    def on_config(self, new, old):
        if new["rows"] * new["cols"] > MAX_PIXELS:
            raise Refused(f"{new['rows']} x {new['cols']} pixels is more than the board reads "
                          f"({MAX_PIXELS})", "out_of_range")

    def on_end(self, run):
        return self._end()

    def _stream_starts(self):
        """Started again after a lost link, the board numbers its images from 0 (and a board that was restarted its
        packets too): what was open is written first, so no packet of the new stream is taken for an old one's."""
        if self._streamed:
            self._let_go()
        self._streamed = True

    def _let_go(self):
        """Write the images still open, marked with what they miss (the run ends, or the stream starts again)."""
        if self.acquisition.run is not None:
            for image in self.assembler.flush():
                self.acquisition.save(image)

    def _end(self):
        if self.acquisition.run is None:
            return self.last_record
        self._let_go()
        record = self.acquisition.end()
        self.last_record = record
        log.info("run %s: %s", record["run"], json.dumps(record))
        return record

    def cmd_status(self, msg):
        """The acquisition's counters in this run (or the last run's record) and the receiver's."""
        acquisition = self.acquisition
        current = acquisition.record() if acquisition.run else None
        return {"run": current, "last_run": self.last_record, **self.assembler.counts(),
                "receiver": self.counts(), "last_error": acquisition.last_error,
                "udp": list(self.addresses[0][:2])}

    async def main(self):
        try:
            await self.acquisition.run_forever(self.stopping)
            return 0
        except GaveUp as exc:
            log.error("%s: %s", self.name, exc)
            return 3
        finally:
            self._end()  # every file closed and complete, also on SIGTERM and Ctrl-C


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.sim.lta", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--board", required=True, type=host_port, help="host:port of the board's control port")
    parser.add_argument("--listen", default="127.0.0.1:0", type=host_port, help="host:port for the board's packets")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    parser.add_argument("--per-file", type=int, default=10, help="images per FITS file")
    parser.add_argument("--tries", type=int, default=5, help="reconnects in a row before giving up")
    parser.add_argument("--silence", type=float, default=2.0, help="seconds without data that count as a lost link")
    parser.add_argument("--window", type=int, default=ccdpackets.WINDOW,
                        help="sequence numbers an incomplete image (and a missing packet) waits for late packets")
    parser.add_argument("--write-queue", type=int, default=WRITE_QUEUE,
                        help="images waiting for the writer's thread, at most; full, the reader waits (counted)")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window {args.window}: at least 1 sequence number")
    if args.write_queue < 1:
        parser.error(f"--write-queue {args.write_queue}: at least 1 image")
    logsetup.configure("INFO", sys.stderr)
    try:
        reader = CcdReader(args.name, args.board, args.listen, data_folder(args.experiment, args.name),
                           args.per_file, args.tries, args.silence, args.window, args.write_queue,
                           experiment=args.experiment)
    except ConfigError as exc:
        print(f"{args.name}: {exc}", file=sys.stderr)
        return 2
    try:
        return reader.serve()
    finally:
        reader.close()


if __name__ == "__main__":
    sys.exit(main())
