"""UDP sockets for receivers: a large kernel buffer, what the kernel dropped, and datagrams read in batches.

A `Batch` is a buffer of fixed slots, allocated once: `fill(sock)` reads every
datagram the socket holds (up to one a slot) with one call a datagram and no
allocation, so a receiver hands a wake-up's worth of packets on in one call.
`kernel_drops(sock)` is what the socket's buffer had no room for (the kernel's
count, SO_MEMINFO). Owns these sockets' options and the batch's layout; knows
nothing of what a datagram holds.
"""

import array
import socket
import struct

import numpy

UDP_BUFFER = 16 << 20
MAX_DATAGRAM = 65535
BATCH_BYTES = 2 << 20    # a batch's buffer: some 250 slots of 8 KiB
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
MEMINFO = struct.Struct("9I")   # Linux's sk_meminfo: ..., [8] packets dropped
MEMINFO_DROPS = 8


def enlarge_receive_buffer(sock, size=UDP_BUFFER):
    """A large kernel buffer, so a burst waits there rather than being lost; beyond net.core.rmem_max only as root."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def kernel_drops(sock):
    """Datagrams the kernel dropped for want of room in `sock`'s buffer since it was opened."""
    return MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size))[MEMINFO_DROPS]


class Batch:
    """The datagrams of one wake-up, datagram i in slot i: `slots()[i, :sizes()[i]]`.

    A datagram longer than `max_size` keeps its first `max_size` bytes in its slot, and its whole length in
    `sizes()`, so its reader can tell it was cut."""

    def __init__(self, max_size=MAX_DATAGRAM):
        self.max_size = max_size
        slots = max(1, BATCH_BYTES // max_size)
        self.array = numpy.zeros((slots, max_size), numpy.uint8)
        view = memoryview(self.array).cast("B")
        self._slots = [view[at:at + max_size] for at in range(0, slots * max_size, max_size)]
        self._sizes = array.array("q", bytes(8 * slots))
        self.count = 0

    def __len__(self):
        return self.count

    def fill(self, sock):
        """Read what non-blocking `sock` holds, at most a datagram a slot; how many came."""
        receive, sizes, count = sock.recv_into, self._sizes, 0
        try:
            for slot in self._slots:
                sizes[count] = receive(slot, 0, socket.MSG_TRUNC)   # the datagram's whole length, even when cut
                count += 1
        except BlockingIOError:
            pass
        self.count = count
        return count

    def slots(self):
        """The filled slots: a (count, max_size) uint8 array, a row a datagram."""
        return self.array[:self.count]

    def sizes(self):
        """The datagrams' lengths (int64)."""
        return numpy.frombuffer(self._sizes, numpy.int64, self.count)

    def total(self):
        """Bytes in the batch's datagrams, whole lengths."""
        return sum(self._sizes[:self.count])
