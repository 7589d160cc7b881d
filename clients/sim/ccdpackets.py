"""The packets a skipper-CCD readout board streams over UDP, and putting images together from them.

One packet, little-endian:

  offset  size  field
  0       4     frame marker, b"DMCM"
  4       2     board id
  6       4     sequence number (per stream, +1 each packet; a gap is lost packets)
  10      4     image number
  14      8     timestamp (seconds since the epoch, float64)
  22      2     row
  24      2     first column of the samples in this packet
  26      2     number of samples N
  28      2     number of rows of the image
  30      2     number of columns of the image
  32      2     skipper samples per pixel
  34      2N    pixel samples (uint16)

A packet is valid when its marker matches, its length is 34 + 2N and its row and
columns fall inside the image. Must not touch sockets or files.
"""

import struct

import numpy

MARKER = b"DMCM"
HEADER = struct.Struct("<4sHIIdHHHHHH")
MAX_SAMPLES = 4096


class BadPacket(ValueError):
    """Not a packet of this format; the text says why."""


def pack(board, seq, image, ts, row, col, rows, cols, samples, pixels):
    """A packet of `pixels` (a numpy uint16 array, or bytes of little-endian uint16)."""
    data = pixels.astype("<u2").tobytes() if isinstance(pixels, numpy.ndarray) else bytes(pixels)
    return HEADER.pack(MARKER, board, seq, image, ts, row, col, len(data) // 2, rows, cols, samples) + data


def unpack(data):
    """(header dict, samples as a numpy uint16 array); BadPacket when it is not one."""
    if len(data) < HEADER.size:
        raise BadPacket(f"{len(data)} bytes: shorter than a header ({HEADER.size})")
    marker, board, seq, image, ts, row, col, count, rows, cols, samples = HEADER.unpack_from(data)
    if marker != MARKER:
        raise BadPacket(f"frame marker {marker!r}, not {MARKER!r}")
    if len(data) != HEADER.size + 2 * count or count > MAX_SAMPLES:
        raise BadPacket(f"{len(data)} bytes for {count} samples")
    if row >= rows or col + count > cols:
        raise BadPacket(f"row {row}, columns {col}..{col + count} outside a {rows}x{cols} image")
    header = {"board": board, "seq": seq, "image": image, "ts": ts, "row": row, "col": col, "rows": rows,
              "cols": cols, "samples": samples}
    return header, numpy.frombuffer(data, "<u2", count, HEADER.size)


class Image:
    """An image being put together: its pixels, and which of its packets came."""

    def __init__(self, header, per_packet):
        self.number, self.board = header["image"], header["board"]
        self.rows, self.cols, self.samples = header["rows"], header["cols"], header["samples"]
        self.started = header["ts"]
        self.pixels = numpy.zeros((self.rows, self.cols), dtype="<u2")
        self.expected = self.rows * -(-self.cols // per_packet)
        self.received = 0

    def add(self, header, samples):
        self.pixels[header["row"], header["col"]:header["col"] + len(samples)] = samples
        self.received += 1

    @property
    def missing(self):
        return max(0, self.expected - self.received)


class Assembler:
    """Images out of packets: gaps in the sequence counted as lost packets, an image complete with its last row
    (or when the next image begins, then marked with what it misses)."""

    def __init__(self, per_packet):
        self.per_packet = per_packet
        self.current = None
        self.next_seq = None
        self.lost = 0

    def add(self, data):
        """Take one packet; the images it completes. BadPacket when it is not one."""
        header, samples = unpack(data)
        if self.next_seq is not None and header["seq"] > self.next_seq:
            self.lost += header["seq"] - self.next_seq
        self.next_seq = header["seq"] + 1
        done = []
        if self.current is not None and header["image"] != self.current.number:
            done.append(self.current)
            self.current = None
        if self.current is None:
            self.current = Image(header, self.per_packet)
        self.current.add(header, samples)
        if header["row"] == header["rows"] - 1 and header["col"] + len(samples) >= header["cols"]:
            done.append(self.current)
            self.current = None
        return done

    def flush(self):
        """The image in progress, as it is (the run ends, the link dropped)."""
        image, self.current = self.current, None
        return [image] if image is not None else []
