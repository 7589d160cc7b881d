"""The packets a skipper-CCD readout board streams over UDP, and putting images together from them.

One packet, little-endian:

  offset  size  field
  0       4     frame marker, b"DMCM"
  4       2     board id
  6       4     sequence number (per stream, +1 each packet, wrapping at 2**32)
  10      4     image number
  14      8     timestamp (seconds since the epoch, float64)
  22      2     row
  24      2     first column of the samples in this packet
  26      2     number of samples N
  28      2     number of rows of the image
  30      2     number of columns of the image
  32      2     skipper samples per pixel
  34      2N    pixel samples (uint16)

A packet is valid when its marker matches, it holds 1 to 4096 samples, its
length is 34 + 2N and its row and columns fall inside the image. A board sends
an image row by row in packets of N samples of its choosing (the last of a row
may be shorter), in sequence order. UDP may reorder, duplicate and lose them:
the `Assembler` puts each packet in its place by (board, image, row, column),
and waits for late ones within a window of sequence numbers. Owns the packet
format and the stream's bookkeeping; must not touch sockets or files.
"""

import struct

import numpy

MARKER = b"DMCM"
HEADER = struct.Struct("<4sHIIdHHHHHH")
MAX_SAMPLES = 4096
WINDOW = 1024           # sequence numbers a gap or an incomplete image waits for late packets
SEQ_SPAN = 1 << 32      # sequence numbers wrap around here
NEVER = float("inf")


class BadPacket(ValueError):
    """Not a packet of this format; the text says why."""


def pack(board, seq, image, ts, row, col, rows, cols, samples, pixels):
    """A packet of `pixels` (a numpy uint16 array, or bytes of little-endian uint16)."""
    data = pixels.astype("<u2").tobytes() if isinstance(pixels, numpy.ndarray) else bytes(pixels)
    return HEADER.pack(MARKER, board, seq % SEQ_SPAN, image, ts, row, col, len(data) // 2, rows, cols,
                       samples) + data


def fault(data):
    """Why `data` is not a valid packet (None when it is one)."""
    if len(data) < HEADER.size:
        return f"{len(data)} bytes: shorter than a header ({HEADER.size})"
    marker, _, _, _, _, row, col, count, rows, cols, _ = HEADER.unpack_from(data)
    if marker != MARKER:
        return f"frame marker {marker!r}, not {MARKER!r}"
    if len(data) != HEADER.size + 2 * count or not 0 < count <= MAX_SAMPLES:
        return f"{len(data)} bytes for {count} samples"
    if row >= rows or col + count > cols:
        return f"row {row}, columns {col}..{col + count} outside a {rows}x{cols} image"
    return None


class Image:
    """An image being put together: its pixels, which places came, and where in the stream it should end."""

    __slots__ = ("board", "number", "rows", "cols", "samples", "started", "pixels", "_bytes", "_seen", "area",
                 "filled", "received", "size", "last_seq", "last_row", "last_col")

    def __init__(self, board, number, rows, cols, samples, started):
        self.board, self.number = board, number
        self.rows, self.cols, self.samples, self.started = rows, cols, samples, started
        self.pixels = numpy.zeros((rows, cols), dtype="<u2")
        self._bytes = memoryview(self.pixels).cast("B")   # both little-endian: a packet's samples copy as they are
        self._seen = bytearray(rows * cols)   # 1 where a packet that came begins
        self.area = rows * cols
        self.filled = 0                       # samples placed
        self.received = 0                     # packets placed
        self.size = 0                         # the largest sample count of its packets: the board's packet size
        self.last_seq = self.last_row = self.last_col = -1   # its packet latest in the stream

    def place(self, seq, row, col, count, data):
        """Put a packet's samples in their place; False (nothing done) when that place was filled already."""
        at = row * self.cols + col
        if self._seen[at]:
            return False
        self._seen[at] = 1
        self._bytes[2 * at:2 * (at + count)] = memoryview(data)[HEADER.size:]
        self.filled += count
        self.received += 1
        if seq > self.last_seq:
            self.last_seq, self.last_row, self.last_col = seq, row, col
        return True

    @property
    def expected(self):
        """Packets the image is made of: rows x columns in packets of the board's size."""
        return self.rows * -(-self.cols // self.size)

    @property
    def missing(self):
        """Packets of the image that never came."""
        return max(0, self.expected - self.received)

    def end(self):
        """The sequence number its last packet has (or would have had): its latest one's plus the places after it."""
        per_row = -(-self.cols // self.size)
        after = self.rows * per_row - 1 - (self.last_row * per_row + self.last_col // self.size)
        return self.last_seq + max(0, after)


class Assembler:
    """Images out of one board's packets, in whatever order they come.

    An image is let go (returned by `add`) as soon as every pixel came, or incomplete once the stream has gone
    `window` sequence numbers past its end (then marked with what it misses), or at `flush`. Counted:
    `lost`, sequence numbers never seen by the time the stream went `window` past them; `duplicates`, packets
    whose place was filled already (also of an image let go complete); `late`, packets more than `window`
    behind the stream (their number was counted lost; they are dropped)."""

    def __init__(self, window=WINDOW, counts=None):
        self.window = window
        counts = {name: value for name, value in (counts or {}).items() if isinstance(value, int)}
        self.lost = counts.get("lost_packets", 0)
        self.duplicates = counts.get("duplicate_packets", 0)
        self.late = counts.get("late_packets", 0)
        self._reset()

    def _reset(self):
        self.high = None          # the highest sequence number seen, unwrapped
        self.gaps = []            # [first, end) ranges of sequence numbers not seen yet, oldest first
        self.open = {}            # (board, image) -> Image
        self.closed = {}          # (board, image) -> end, of images let go complete, while in the window
        self.current = None       # the image of the last packet
        self.next_check = NEVER   # `high` at which a gap or an image may leave the window

    def counts(self):
        """The counters, under the names of the run's record."""
        return {"lost_packets": self.lost, "duplicate_packets": self.duplicates, "late_packets": self.late}

    def add(self, data):
        """Take one packet; the images it lets go. BadPacket when it is not one."""
        try:
            marker, board, seq, number, ts, row, col, count, rows, cols, samples = HEADER.unpack_from(data)
        except struct.error:
            raise BadPacket(fault(data)) from None
        if marker != MARKER or len(data) != HEADER.size + 2 * count or not 0 < count <= MAX_SAMPLES \
                or row >= rows or col + count > cols:
            raise BadPacket(fault(data))
        seq = self._sequence(seq)
        if seq is None:
            self.late += 1
            return ()
        image = self.current
        if image is None or image.number != number or image.board != board or image.cols != cols \
                or image.rows != rows:
            image = self._image(board, number, rows, cols, samples, ts, seq)
            if image is None:
                return ()
        if not image.place(seq, row, col, count, data):
            self.duplicates += 1
            return ()
        if count > image.size:
            image.size = count
            self.next_check = min(self.next_check, image.end() + self.window)
        done = (self._let_go(image, complete=True),) if image.filled >= image.area else ()
        if self.high >= self.next_check:
            done = [*done, *self._expire()]
        return done

    def flush(self):
        """Every open image as it is, the gaps counted lost; the next packet begins a new stream (the run ends,
        the board starts again)."""
        self.lost += sum(end - first for first, end in self.gaps)
        images = list(self.open.values())
        self._reset()
        return images

    def _sequence(self, seq):
        """`seq` unwrapped into the stream's count; None when it is more than the window behind the highest."""
        high = self.high
        if high is None:
            self.high = seq
            return seq
        step = (seq - high) % SEQ_SPAN
        if step == 1:
            self.high = high + 1
            return high + 1
        if step < SEQ_SPAN // 2:   # ahead (0: the highest again): the numbers between are missing so far
            if step > 1:
                self.gaps.append([high + 1, high + step])
                self.next_check = min(self.next_check, high + 1 + self.window)
            self.high = high + step
            return high + step
        seq = high + step - SEQ_SPAN
        if seq <= high - self.window:
            return None
        self._arrived_late(seq)
        return seq

    def _arrived_late(self, seq):
        """A number behind the highest came: it is no longer missing."""
        for at, (first, end) in enumerate(self.gaps):
            if first <= seq < end:
                tail = [seq + 1, end]
                self.gaps[at:at + 1] = [part for part in ([first, seq], tail) if part[0] < part[1]]
                return

    def _image(self, board, number, rows, cols, samples, ts, seq):
        """The open image a packet belongs to (opened if need be); None when it came for an image let go complete
        (a duplicate, counted)."""
        key = (board, number)
        image = self.open.get(key)
        if image is None:
            end = self.closed.get(key)
            if end is not None and seq <= end:
                self.duplicates += 1
                return None
            image = self.open[key] = Image(board, number, rows, cols, samples, ts)
        elif (image.rows, image.cols) != (rows, cols):
            raise BadPacket(f"image {number} of board {board} is {image.rows}x{image.cols}, "
                            f"a packet of it says {rows}x{cols}")
        self.current = image
        return image

    def _let_go(self, image, complete):
        del self.open[(image.board, image.number)]
        if self.current is image:
            self.current = None
        if complete:
            self.closed[(image.board, image.number)] = end = image.end()
            self.next_check = min(self.next_check, end + self.window)
        return image

    def _expire(self):
        """Count the gaps that left the window as lost; let go the incomplete images that did, forget the
        complete ones that did; the next `high` to look again at."""
        high, window = self.high, self.window
        while self.gaps and self.gaps[0][0] <= high - window:
            first, end = self.gaps[0]
            cut = min(end, high - window + 1)
            self.lost += cut - first
            if cut == end:
                del self.gaps[0]
            else:
                self.gaps[0][0] = cut
        deadlines = [self.gaps[0][0] + window] if self.gaps else []
        done = []
        for image in list(self.open.values()):
            if image.end() + window <= high:
                done.append(self._let_go(image, complete=False))
            else:
                deadlines.append(image.end() + window)
        for key, end in list(self.closed.items()):
            if end + window <= high:
                del self.closed[key]
            else:
                deadlines.append(end + window)
        self.next_check = min(deadlines, default=NEVER)
        return done
