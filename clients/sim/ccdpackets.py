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
and waits for late ones within a window of sequence numbers. It takes packets
one at a time (`add`) or a receiver's batch at once (`add_batch`: the headers
read together, and the packets that go on the stream in order copied into
their image together; any other one as `add` takes it, with the same result).
Owns the packet format and the stream's bookkeeping; must not touch sockets or files.
"""

import struct

import numpy

MARKER = b"DMCM"
HEADER = struct.Struct("<4sHIIdHHHHHH")
HEADERS = numpy.dtype({"names": ["marker", "board", "seq", "image", "ts", "row", "col", "count", "rows", "cols",
                                 "samples"],
                       "formats": ["<u4", "<u2", "<u4", "<u4", "<f8", "<u2", "<u2", "<u2", "<u2", "<u2", "<u2"],
                       "offsets": [0, 4, 6, 10, 14, 22, 24, 26, 28, 30, 32], "itemsize": HEADER.size})
MARKER_WORD = int.from_bytes(MARKER, "little")
MAX_SAMPLES = 4096
MAX_PACKET = HEADER.size + 2 * MAX_SAMPLES
WINDOW = 1024           # sequence numbers a gap or an incomplete image waits for late packets
SEQ_SPAN = 1 << 32      # sequence numbers wrap around here
NEVER = float("inf")
BULK = 32               # packets in a batch from which reading their headers together pays


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


def new_pixels(rows, cols):
    return numpy.zeros((rows, cols), "<u2")


class Image:
    """An image being put together: its pixels, which places came, and where in the stream it should end."""

    __slots__ = ("board", "number", "rows", "cols", "samples", "started", "pixels", "_bytes", "_seen", "area",
                 "filled", "received", "size", "last_seq", "last_row", "last_col")

    def __init__(self, board, number, rows, cols, samples, started, pixels):
        self.board, self.number = board, number
        self.rows, self.cols, self.samples, self.started = rows, cols, samples, started
        self.pixels = pixels                  # rows x cols of little-endian uint16, zero
        self._bytes = memoryview(self.pixels).cast("B")   # both little-endian: a packet's samples copy as they are
        self._seen = set()                    # the places where the packets that came begin
        self.area = rows * cols
        self.filled = 0                       # samples placed
        self.received = 0                     # packets placed
        self.size = 0                         # the largest sample count of its packets: the board's packet size
        self.last_seq = self.last_row = self.last_col = -1   # its packet latest in the stream

    def filled_any(self, places):
        """Whether a packet came already for any of `places` (a list)."""
        return not self._seen.isdisjoint(places)

    def place_many(self, slots, places, counts):
        """Put packets in their places, none of them filled yet nor overlapping another: packet i, a row of `slots`
        (header and samples), at `places[i]` (row x columns + column, a list), `counts[i]` samples (an array)."""
        first, size, samples = places[0], int(counts[0]), int(counts.sum())
        pixels = self.pixels.reshape(-1)
        if places[-1] + int(counts[-1]) - first == samples and (counts == size).all():   # one stretch of rows
            pixels[first:first + samples].reshape(len(places), size)[...] = \
                slots[:, HEADER.size:HEADER.size + 2 * size].view("<u2")
        else:
            for packet, place, count in zip(slots, places, counts.tolist()):
                pixels[place:place + count] = packet[HEADER.size:HEADER.size + 2 * count].view("<u2")
        self._seen.update(places)
        self.filled += samples
        self.received += len(places)

    def place(self, seq, row, col, count, data):
        """Put a packet's samples in their place; False (nothing done) when that place was filled already."""
        at = row * self.cols + col
        if at in self._seen:
            return False
        self._seen.add(at)
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


class Headers:
    """The headers of a batch's packets, read together (a numpy array a field), and what `Assembler` asks of them:
    which are valid, and where the stream goes on in order."""

    def __init__(self, slots, sizes):
        self.slots = slots
        heads = numpy.ndarray(len(sizes), HEADERS, slots, 0, (slots.strides[0],))
        self.board, self.image, self.rows, self.cols = heads["board"], heads["image"], heads["rows"], heads["cols"]
        self.seq = heads["seq"].astype(numpy.int64)
        self.row, self.col = heads["row"].astype(numpy.int64), heads["col"].astype(numpy.int64)
        self.counts = heads["count"].astype(numpy.int64)
        self.places = self.row * self.cols + self.col
        self.valid = (heads["marker"] == MARKER_WORD) & (sizes == HEADER.size + 2 * self.counts) \
            & (self.counts > 0) & (self.counts <= MAX_SAMPLES) & (self.row < self.rows) \
            & (self.col + self.counts <= self.cols)

    def stretches(self):
        """Where each stretch of packets ends, a packet of one following the one before it in the stream (the
        next sequence number), in the same image, in a later place that does not overlap it."""
        valid, places = self.valid, self.places
        follows = valid[1:] & valid[:-1] & ((self.seq[1:] - self.seq[:-1]) % SEQ_SPAN == 1) \
            & (self.image[1:] == self.image[:-1]) & (self.board[1:] == self.board[:-1]) \
            & (self.rows[1:] == self.rows[:-1]) & (self.cols[1:] == self.cols[:-1]) \
            & (places[1:] >= places[:-1] + self.counts[:-1])
        return [*(numpy.flatnonzero(~follows) + 1).tolist(), len(valid)]


class Assembler:
    """Images out of one board's packets, in whatever order they come.

    An image is let go (returned by `add`) as soon as every pixel came, or incomplete once the stream has gone
    `window` sequence numbers past its end (then marked with what it misses), or at `flush`. Counted:
    `lost`, sequence numbers never seen by the time the stream went `window` past them; `duplicates`, packets
    whose place was filled already (also of an image let go complete); `late`, packets more than `window`
    behind the stream (their number was counted lost; they are dropped). `counts`: the counters to go on from (a
    run's record); `pixels(rows, cols)`: a new image's pixels, all zero (numpy's own by default)."""

    def __init__(self, window=WINDOW, counts=None, pixels=None):
        self.window = window
        self.pixels = pixels or new_pixels   # (rows, cols) -> a new image's pixels, all zero
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

    def add_batch(self, slots, sizes):
        """Take a batch of packets, packet i being `slots[i, :sizes[i]]` (a uint8 array, a row a packet, as wide as
        the longest packet: one longer was cut, its length in `sizes`); (the images they let go, [(packet, why)] of
        those that are no packet). The same as `add` of each in turn; in a batch of BULK packets or more, those that
        go on the stream in order are placed together."""
        images, invalid = [], []
        if len(sizes) < BULK:
            for at in range(len(sizes)):
                self._add_one(slots, sizes, at, images, invalid)
            return images, invalid
        heads = Headers(slots, sizes)
        first = 0
        for end in heads.stretches():
            at, by_one = first, False
            while at < end:
                taken = 0 if by_one else self._in_order(heads, at, end)
                if taken > 0:
                    images += self._place(heads, at, taken)
                    at += taken
                    continue
                by_one = taken < 0   # in order, yet not placed together: the rest of the stretch one by one
                self._add_one(slots, sizes, at, images, invalid)
                at += 1
            first = end
        return images, invalid

    def _add_one(self, slots, sizes, at, images, invalid):
        """`add` packet `at` of a batch: what it lets go onto `images`, or (the packet, why) onto `invalid`."""
        size = int(sizes[at])
        packet = slots[at, :min(size, slots.shape[1])]
        try:
            if size > slots.shape[1]:
                raise BadPacket(f"{size} bytes: longer than any packet ({slots.shape[1]})")
            images += self.add(packet)
        except BadPacket as exc:
            invalid.append((bytes(packet), str(exc)))

    def _in_order(self, heads, at, end):
        """How many packets from `at` (up to `end`) go on the stream in order into the current image, where `add`
        would only place them, one after the other: 0 when packet `at` is not the stream's next in the current
        image, -1 when it is but the packets cannot be placed together."""
        image = self.current
        if image is None or not heads.valid[at] or (heads.seq[at] - self.high) % SEQ_SPAN != 1 \
                or (heads.board[at], heads.image[at], heads.rows[at], heads.cols[at]) != \
                (image.board, image.number, image.rows, image.cols) or self.next_check <= self.high:
            return 0   # (a look at the window that a packet `add` left early put off: the next `add` takes it)
        taken = int(min(end - at, self.next_check - self.high))   # the last may bring the next look at the window
        counts = heads.counts[at:at + taken]
        if counts.max() > image.size or image.filled + int(counts.sum()) > image.area \
                or image.filled_any(heads.places[at:at + taken].tolist()):
            return -1   # a larger packet than the image's, more samples than it holds, or a place filled already
        return taken

    def _place(self, heads, at, taken):
        """Place packets `at`..`at + taken` (see `_in_order`) into the current image; the images that lets go."""
        image, last = self.current, at + taken - 1
        image.place_many(heads.slots[at:at + taken], heads.places[at:at + taken].tolist(),
                         heads.counts[at:at + taken])
        self.high += taken
        image.last_seq, image.last_row, image.last_col = self.high, int(heads.row[last]), int(heads.col[last])
        done = [self._let_go(image, complete=True)] if image.filled >= image.area else []
        if self.high >= self.next_check:
            done += self._expire()
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
            image = self.open[key] = Image(board, number, rows, cols, samples, ts, self.pixels(rows, cols))
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
