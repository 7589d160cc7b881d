"""A client's connection to the server, whatever carries it.

Routing, the registry and every server command deal in `Connection`s: send
bytes, an identity to key it by, the name of the key it authenticated with, and
the transport's name. `ZmqConnection` is one peer of the ROUTER socket;
`legacy.LegacyConnection` is a libABCD client's raw TCP.
Must not know what the bytes mean.
"""

import zmq

# Plain ints: pyzmq's enum flags cost an enum operation on every send.
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
# pyzmq's Socket.send is a Python layer over its compiled base (for draft sockets' routing ids and groups, which the
# bus has none of): the base alone takes a third of the time, on every frame the server sends.
send_frame = zmq.backend.Socket.send
# Frames this large are sent and received without a copy: copying them costs more than ZeroMQ's handing over of a
# buffer it does not own (about 10 us; a copy of 64 KiB took 30 us, of 1 MiB 250 us).
COPY_BELOW = 65536


class Closed(Exception):
    """The other end of the connection is gone."""


class Connection:
    """What the bus needs of a connection. `identity` is hashable and unique among live connections."""

    __slots__ = ()
    transport = None
    answers_pings = True   # a server ping gets a pong (libABCD clients only ping the server themselves)
    max_message = None     # the largest message it can be sent, when smaller than the server's limit
    timeout_s = None       # its own liveness timeout, when not the server's

    def send(self, data):
        """Send one message without blocking: True when taken, False when the peer's queue is full.

        Raises Closed when the peer is gone.
        """
        raise NotImplementedError

    def describe(self):
        """A short name of the connection for logs."""
        raise NotImplementedError

    def close(self):
        """The server is done with this client (it was lost or replaced): end the connection if the transport can."""


class ZmqConnection(Connection):
    """One peer of the server's ROUTER socket, known by its routing id."""

    __slots__ = ("router", "identity", "key")
    transport = "zmq"

    def __init__(self, router, identity, key=None):
        self.router, self.identity, self.key = router, identity, key

    def send(self, data):
        try:
            send_frame(self.router, self.identity, NOBLOCK_MORE)
            send_frame(self.router, data, NOBLOCK, len(data) < COPY_BELOW)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            raise Closed(self.describe()) from None
        return True

    def describe(self):
        return self.identity.hex()
