"""Who may act from the web page: the password file, and the sessions of those who logged in.

The file (JSON, mode 0600) holds each operator's scrypt hash, made by
`python -m web.users`; without it the page is read-only. A session is a random
token in an HttpOnly, SameSite=Strict cookie (Secure off loopback), kept in
memory for SESSION_S: a restarted web program asks everyone to log in again.
Must not touch the bus.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from runcontrol.errors import ConfigError

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
SESSION_S = 12 * 3600.0
COOKIE = "orbit_session"
FAILURES_PER_MINUTE = 10
NAME_MAX = 64


def hash_password(password, salt=None):
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT, dklen=32)
    return "scrypt${n}${r}${p}${salt}${digest}".format(**SCRYPT, salt=b64(salt), digest=b64(digest))


def check_password(password, stored):
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        made = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                              dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(made, base64.b64decode(digest))


def b64(data):
    return base64.b64encode(data).decode()


class Users:
    """The password file: operator name -> scrypt hash."""

    def __init__(self, path):
        self.path = Path(path)

    def exists(self):
        return self.path.is_file()

    def read(self):
        try:
            users = json.loads(self.path.read_text(encoding="utf-8")).get("users")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{self.path}: not a password file ({exc}); make it with python -m web.users") from None
        if not isinstance(users, dict):
            raise ConfigError(f"{self.path}: not a password file (no 'users'); make it with python -m web.users")
        return users

    def check(self, name, password):
        stored = self.read().get(name) if isinstance(name, str) else None
        if not isinstance(stored, dict) or not isinstance(password, str):
            check_password("x", hash_password("y"))   # the same time whether the name exists or not
            return False
        return check_password(password, stored.get("hash", ""))

    def set(self, name, password):
        if not name or len(name) > NAME_MAX or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"operator name {name!r}: 1 to {NAME_MAX} letters, digits, '-', '_' or '.'")
        if len(password) < 8:
            raise ConfigError("a password has at least 8 characters")
        users = self.read()
        users[name] = {"hash": hash_password(password), "set": round(time.time())}
        self._write(users)

    def remove(self, name):
        users = self.read()
        if users.pop(name, None) is None:
            raise ConfigError(f"no operator {name!r} in {self.path}")
        self._write(users)

    def _write(self, users):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"users": users}, out, indent=1)
        os.replace(tmp, self.path)


class Sessions:
    """Tokens of logged-in operators; failed logins limited per address."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.tokens = {}     # token -> (name, expires)
        self.failures = {}   # address -> [times]

    def open(self, name):
        token = secrets.token_urlsafe(32)
        self.tokens[token] = (name, self.clock() + SESSION_S)
        return token

    def who(self, token):
        held = self.tokens.get(token) if isinstance(token, str) else None
        if held is None:
            return None
        if held[1] < self.clock():
            del self.tokens[token]
            return None
        return held[0]

    def close(self, token):
        self.tokens.pop(token, None)

    def may_try(self, address):
        now = self.clock()
        recent = [t for t in self.failures.get(address, []) if now - t < 60]
        self.failures[address] = recent
        return len(recent) < FAILURES_PER_MINUTE

    def failed(self, address):
        self.failures.setdefault(address, []).append(self.clock())
