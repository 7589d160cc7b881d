"""The server's gatekeeper: ZAP authentication of CURVE clients, and which names each key may register.

Owns the list of allowed client public keys (the `*.key` files of the
experiment's `server.curve.clients` folder, re-read when the folder changes) and
the binding of keys to names (`server.curve.names`). Answers ZAP requests
(RFC 27) handed to it by the server's loop, naming each connection by its key
(the User-Id of its messages). Must not touch the server's other sockets.
"""

import fnmatch
import logging
from pathlib import Path

import zmq.auth

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class Gatekeeper:
    def __init__(self, clients_folder, names=None):
        self.folder = Path(clients_folder)
        self.names = dict(names or {})   # key name -> patterns of client names it may register
        self.keys = {}                   # public key (z85 bytes) -> key name
        self._stamp = None
        self.refresh()

    def refresh(self):
        """Re-read the allowed keys if the folder changed (a key added or removed takes effect at once)."""
        try:
            stamp = self.folder.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        keys = {}
        for path in sorted(self.folder.glob("*.key")) if stamp is not None else []:
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                log.warning("ignored the key file %s: %s", path, exc)
                continue
            keys[public] = path.stem
        self.keys = keys
        log.info("%d client key(s) allowed from %s", len(keys), self.folder)

    def answer(self, frames):
        """The ZAP reply frames for a ZAP request."""
        if len(frames) < 6:
            return None
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        status, text, user = self._judge(mechanism, frames[6:])
        if status != b"200":
            log.warning("refused a connection from %s: %s", address.decode(errors="replace"), text)
        return [version, request_id, status, text.encode(), user.encode(), b""]

    def _judge(self, mechanism, credentials):
        if mechanism != b"CURVE" or len(credentials) != 1:
            return b"400", f"mechanism {mechanism.decode(errors='replace')} is not allowed: CURVE only", ""
        self.refresh()
        public = zmq.utils.z85.encode(credentials[0])
        name = self.keys.get(public)
        if name is None:
            return b"400", f"unknown client key {public.decode()[:12]}...", ""
        return b"200", "OK", name  # the key's name becomes the connection's User-Id

    def may_register(self, key, client_name):
        """None if a connection authenticated with key `key` may register `client_name`, else why not."""
        patterns = self.names.get(key)
        if patterns is None or any(fnmatch.fnmatchcase(client_name, p) for p in patterns):
            return None
        return f"key {key!r} may register only {', '.join(patterns)}, not {client_name!r}"
