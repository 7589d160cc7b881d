"""libABCD 0.1's wire, so that its unmodified clients join the bus: raw TCP, JSON objects with no framing.

Owns the listening socket, each legacy connection (a `Connection` like a ZeroMQ
peer's, so registry, routing and commands serve it unchanged), cutting the byte
stream into objects, `_init` and `_ping`, and writing what the client can read.
The server's loop calls it (`accept`, each connection's reads, `tick` after
every turn, sooner when `revisit_s` says so); it hands what it reads to the
server (`admit`, `take_message`, `hello`). Must not route or register by itself.

A libABCD client reads with `recv(1024)` and parses the objects of that chunk
alone: an object cut in two, or whitespace, drops its connection. So every
object written to it is one frame of exactly FRAME bytes (padded inside, under
PAD_KEY), and a frame is written only when the socket holds no unsent bytes:
each frame travels in a segment of its own, and every read of 1024 bytes is one
whole frame.
"""

import collections
import fcntl
import logging
import re
import socket
import struct
import time

import orjson

from runcontrol import protocol
from runcontrol.bus.connection import Closed, Connection
from runcontrol.errors import ProtocolError

log = logging.getLogger("runcontrol.server")

FRAME = 1024
PAD_KEY = "_pad"
MAX_OBJECT = FRAME - len(f',"{PAD_KEY}":""')   # the largest object that can still be padded to a frame
BEACON = b"IamABCD"
BEACON_PORT = 7886         # hard-coded in libABCD 0.1
MAX_QUEUE = 1000           # frames waiting for a slow reader; past that, messages to it are dropped
EARLY_MAX = 1000           # messages a reconnecting client sends before its `_init`, held for it
EARLY_WAIT_S = 5.0
TICK_S = 0.005             # how soon the loop comes back while frames wait to be written to a libABCD client
READ_BYTES = 65536
SIOCOUTQNSD = 0x894B       # bytes the kernel has not sent yet
PONG = {"cmd": "_pong"}
TOKENS = re.compile(rb'[{}"\\]')


class Decoder:
    """Whole JSON objects out of a byte stream without framing; what is not one is said, as (code, text)."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self._reset()
        self.discarding = False

    def _reset(self):
        self.scan, self.depth, self.in_string = 0, 0, False

    def feed(self, data):
        """[(message dict, size) or (None, (code, text))] for what `data` completes."""
        self.buf += data
        found = []
        while self.buf:
            if self.discarding:
                end = self._scan()
                if end is None:
                    del self.buf[:]
                    self.scan = 0
                    return found
                del self.buf[:end]
                self.discarding = False
                self._reset()
                continue
            if self.depth == 0 and not self._skip_to_object(found):
                return found
            end = self._scan()
            if end is None:
                if len(self.buf) > self.max_bytes:
                    found.append((None, (protocol.TOO_LARGE, f"an object of more than {self.max_bytes} bytes "
                                                              f"(the limit): dropped")))
                    del self.buf[:]
                    self.scan = 0
                    self.discarding = True
                return found
            if end > self.max_bytes:
                found.append((None, (protocol.TOO_LARGE, f"an object of {end} bytes exceeds the limit of "
                                                          f"{self.max_bytes}")))
            else:
                found.append(parse(bytes(self.buf[:end])))
            del self.buf[:end]
            self._reset()
        return found

    def _skip_to_object(self, found):
        """Drop what stands before the next `{` (whitespace silently, anything else said once, when the `{`
        comes or the junk grows past the limit); False while there is no `{`."""
        start = self.buf.find(b"{")
        if start < 0:
            if not self.buf.strip():
                del self.buf[:]
            elif len(self.buf) > self.max_bytes:
                found.append((None, junk(bytes(self.buf))))
                del self.buf[:]
            return False
        head = bytes(self.buf[:start])
        if head.strip():
            found.append((None, junk(head)))
        del self.buf[:start]
        return True

    def _scan(self):
        """The end of the object the buffer starts with, or None while it is not complete."""
        buf, pos = self.buf, self.scan
        while True:
            match = TOKENS.search(buf, pos)
            if match is None:
                self.scan = len(buf)
                return None
            char, pos = buf[match.start()], match.end()
            if self.in_string:
                if char == 0x5C:  # a backslash: the next byte is escaped
                    if pos >= len(buf):
                        self.scan = match.start()
                        return None
                    pos += 1
                elif char == 0x22:
                    self.in_string = False
            elif char == 0x22:
                self.in_string = True
            elif char == 0x7B:
                self.depth += 1
            elif char == 0x7D:
                self.depth -= 1
                if self.depth == 0:
                    return pos


def parse(data):
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return None, (protocol.BAD_JSON, f"not valid JSON: {exc}")
    if type(msg) is not dict:
        return None, (protocol.NOT_OBJECT, f"a message must be a JSON object, not {protocol.type_name(msg)}")
    return msg, len(data)


def junk(data):
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return protocol.BAD_JSON, f"not JSON between objects: {data[:60]!r}"
    return protocol.NOT_OBJECT, f"a message must be a JSON object, not {protocol.type_name(value)}"


def frame(data):
    """An encoded object (compact JSON) as one frame of exactly FRAME bytes; None when it cannot fit."""
    if len(data) == FRAME:
        return data
    if len(data) > MAX_OBJECT or not data.endswith(b"}"):
        return None
    pad = FRAME - len(data) - len(f',"{PAD_KEY}":""')
    joint = b"" if data == b"{}" else b","
    if not joint:
        pad += 1
    return data[:-1] + joint + b'"' + PAD_KEY.encode() + b'":"' + b"-" * pad + b'"}'


class LegacyConnection(Connection):
    """One libABCD client's TCP connection: frames to write, bytes read and not yet whole objects."""

    __slots__ = ("sock", "identity", "key", "address", "decoder", "out", "sending", "early", "closed", "name",
                 "timeout_s")
    transport = "legacy"
    answers_pings = False
    max_message = MAX_OBJECT

    def __init__(self, sock, address, number, max_bytes, timeout_s):
        self.sock, self.address = sock, address
        self.identity = ("legacy", number)
        self.key = None
        self.decoder = Decoder(max_bytes)
        self.out = collections.deque()     # frames not yet written
        self.sending = b""                 # the part of a frame the socket did not take
        self.early = collections.deque()   # (when, message, size) sent before `_init`
        self.closed = False
        self.name = None
        self.timeout_s = timeout_s

    def send(self, data):
        if self.closed:
            raise Closed(self.describe())
        if data.startswith(b'{"cmd":"_ping"') and b'"from":"server"' in data:
            return True  # its liveness is its own pings: the server's never reach it
        framed = frame(data)
        if framed is None:
            log.warning("a message of %d bytes cannot be written to legacy client %s (at most %d): dropped",
                        len(data), self.describe(), MAX_OBJECT)
            return True
        if len(self.out) >= MAX_QUEUE:
            return False
        self.out.append(framed)
        self.flush()
        return True

    def flush(self):
        """Write frames while the socket holds no unsent bytes; True when some are left to write."""
        try:
            while self.sending or self.out:
                if not self.sending:
                    if unsent(self.sock):
                        return True
                    self.sending = self.out.popleft()
                written = self.sock.send(self.sending)
                self.sending = self.sending[written:]
                if self.sending:
                    return True
        except BlockingIOError:
            return True
        except OSError:
            self.closed = True
        return False

    def pending(self):
        return bool(self.sending or self.out)

    def close(self):
        self.closed = True  # the gateway closes the socket at its next tick

    def describe(self):
        return f"{self.name or '?'}@{self.address[0]}:{self.address[1]} (libABCD)"


def unsent(sock):
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class LegacyGateway:
    """The listening socket and every legacy connection; `server` takes their messages in, and its loop watches
    their sockets (`watch(sock, on_ready)`, `unwatch(sock)`)."""

    def __init__(self, server, spec, beacon_address, watch, unwatch):
        self.server = server
        self.watch, self.unwatch = watch, unwatch
        self.spec = spec
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind at once after a crash
        try:
            self.listener.bind((spec.address, spec.port))
        except OSError as exc:
            self.listener.close()
            raise OSError(exc.errno, f"cannot listen for libABCD clients on {spec.address}:{spec.port}: "
                                     f"{exc.strerror}") from None
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.address = "%s:%d" % self.listener.getsockname()[:2]
        self.beacon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.beacon.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.beacon_target = (beacon_address, BEACON_PORT)
        self.by_fd = {}
        self._numbers = 0

    # --- the server's loop ------------------------------------------------------------------

    def revisit_s(self):
        """How soon the loop must come back: soon while some connection has frames to write or early messages
        held; else None."""
        return TICK_S if any(conn.pending() or conn.early for conn in self.by_fd.values()) else None

    def send_beacon(self):
        try:
            self.beacon.sendto(BEACON, self.beacon_target)
        except OSError as exc:
            log.debug("IamABCD to %s:%d: %s", *self.beacon_target, exc)

    def tick(self, now):
        """Write what waits, close what closed, let go of early messages that waited too long."""
        for conn in list(self.by_fd.values()):
            if conn.pending():
                conn.flush()
            while conn.early and now - conn.early[0][0] > EARLY_WAIT_S:
                _, msg, _ = conn.early.popleft()
                self._refuse(conn, protocol.NOT_REGISTERED, f"send _init before {msg.get('cmd')!r}: "
                                                            "this connection is not registered", msg)
            if conn.closed:
                self._close(conn, "its connection closed")

    def close(self):
        for conn in list(self.by_fd.values()):
            conn.sock.close()
        self.by_fd.clear()
        self.listener.close()
        self.beacon.close()

    # --- connections -------------------------------------------------------------------------

    def accept(self):
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accepting a libABCD client: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._numbers += 1
            conn = LegacyConnection(sock, address, self._numbers, self.server.max_bytes, self.spec.timeout_s)
            self.by_fd[sock.fileno()] = conn
            self.watch(sock, lambda conn=conn: self._read(conn))
            log.info("libABCD client connected from %s:%d", *address[:2])

    def _read(self, conn):
        try:
            data = conn.sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn, "it closed its connection")
            return
        for msg, size in conn.decoder.feed(data):
            peer = self.server.peer_of(conn)
            if not self.server.admit(conn, peer, size if msg is not None else 0):
                continue  # a flood: the limits of any client apply
            if msg is None:
                self._refuse(conn, *size)
            else:
                self._take(conn, peer, msg, size)

    def _take(self, conn, peer, msg, size):
        cmd = msg.get("cmd")
        if cmd == "_ping":
            conn.send(protocol.encode(PONG))
        elif cmd == "_init":
            self._init(conn, peer, msg)
        elif peer is None:
            if len(conn.early) >= EARLY_MAX:
                self._refuse(conn, protocol.NOT_REGISTERED, "send _init first: this connection is not registered",
                             msg)
            else:
                conn.early.append((time.monotonic(), msg, size))
        else:
            msg.pop(PAD_KEY, None)
            self.server.take_message(conn, peer, msg, oneway=True)

    def _init(self, conn, peer, msg):
        host = conn.address[0]
        hello = protocol.Hello(msg.get("name"), None, host, {},
                               {"legacy": True, "address": f"{host}:{conn.address[1]}"})
        try:
            if not protocol.valid_name(hello.name):
                raise ProtocolError(protocol.BAD_NAME, f"name {hello.name!r} must match {protocol.NAME_RE.pattern} "
                                                       "and not be 'server'")
            self.server.hello(conn, peer, hello, None)
        except ProtocolError as exc:
            self._refuse(conn, exc.code, str(exc), msg)
            return
        conn.name = hello.name
        registered = self.server.peer_of(conn)
        if registered is None:
            return  # its name is claimed from a holder that may be alive: settled by the registry
        while conn.early:  # what it queued before this `_init`, in order
            _, early, size = conn.early.popleft()
            early.pop(PAD_KEY, None)
            self.server.take_message(conn, registered, early, oneway=True)

    def _refuse(self, conn, code, text, msg=None):
        try:
            self.server.reject(conn, code, text, protocol.request_id(msg) if isinstance(msg, dict) else None)
        except Closed:
            pass

    def _close(self, conn, reason):
        self.by_fd.pop(conn.sock.fileno(), None)
        self.unwatch(conn.sock)
        conn.closed = True
        conn.sock.close()
        peer = self.server.peer_of(conn)
        if peer is not None:
            self.server.drop(peer, "client_left", reason)
        log.info("libABCD client %s gone: %s", conn.describe(), reason)
