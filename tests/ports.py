"""Loopback ports the test suite owns, so that no test takes another's and nothing else takes ours.

Each process of the suite (a pytest worker, a benchmark, a chaos run) claims a block of ports below
the kernel's ephemeral range (the kernel never hands those out by itself) by holding a lock file for
its life, and hands its ports out in turn. Two suites side by side, or a benchmark beside a suite,
never get the same port; a port some other program listens on is skipped.
"""

import fcntl
import os
import socket
import threading

FIRST = 10000
BLOCK = 400
LOCKS = "/tmp/orbit-test-ports-{}.lock"

_claim = threading.Lock()
_block = None


class Block:
    def __init__(self, first, lock_file):
        self.first, self.lock_file = first, lock_file   # the lock is held while the file stays open
        self.next = 0

    def port(self):
        """The next port of the block that nothing listens on now, TCP or UDP."""
        for _ in range(BLOCK):
            port = self.first + self.next
            self.next = (self.next + 1) % BLOCK
            if free(port):
                return port
        raise AssertionError(f"every port from {self.first} to {self.first + BLOCK - 1} is in use")


def free(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def ephemeral_ports():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low, high = map(int, ranges.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return max(low, FIRST + BLOCK), high


def block():
    """This process's block, claimed at the first call."""
    global _block
    with _claim:
        if _block is None or _block.pid != os.getpid():   # a forked child claims its own
            _block = claim()
            _block.pid = os.getpid()
        return _block


def claim():
    for slot in range((ephemeral_ports()[0] - FIRST) // BLOCK):
        lock_file = open(LOCKS.format(slot), "w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            continue
        return Block(FIRST + slot * BLOCK, lock_file)
    raise AssertionError("every block of test ports is held by another process")


def port():
    """A loopback port of this process's block, free now and given to no other test."""
    return block().port()
