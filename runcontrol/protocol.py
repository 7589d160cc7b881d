"""Wire protocol, version 1: envelope fields, error codes, builders and parsers.

Owns the shape of every message on the command bus, the event stream and the
beacon (see PROTOCOL.md). Builders (`make_*`) and parsers (`parse_*`) come in
pairs. This module must not touch sockets, log, or sleep.
"""

import re
from dataclasses import dataclass, field

import orjson

from runcontrol.errors import ProtocolError, Refused, RequestFailed, ClientLost, NoSuchClient

VERSION = 1
SERVICE = "orbit"
SERVER = "server"
BROADCAST = "*"
HOST_AGENT = "host."   # each host's agent registers as host.<name>

DEFAULT_ROUTER = "tcp://127.0.0.1:9820"
DEFAULT_EVENTS = "tcp://127.0.0.1:9821"
DEFAULT_BEACON_ADDRESS = "127.255.255.255"
DEFAULT_BEACON_PORT = 7886
DEFAULT_BEACON_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_S = 5.0
DEFAULT_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 1 << 20
MAX_BEACON_BYTES = 2048

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_CMD_LEN = 64
MAX_ID_LEN = 64
MAX_TOPIC_LEN = 200

# Error codes the server uses; clients may use their own in `_reply` refusals.
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
BAD_FRAMES = "bad_frames"
TOO_LARGE = "too_large"
NO_CMD = "no_cmd"
BAD_FIELD = "bad_field"
NOT_REGISTERED = "not_registered"
NAME_TAKEN = "name_taken"
BAD_NAME = "bad_name"
NO_SUCH_CLIENT = "no_such_client"
UNKNOWN_COMMAND = "unknown_command"
CLIENT_LOST = "client_lost"
QUEUE_FULL = "queue_full"
INTERNAL = "internal"
HANDLER_ERROR = "handler_error"
NOT_ALLOWED = "not_allowed"
THROTTLED = "throttled"
TOO_MANY_CLIENTS = "too_many_clients"
TOO_MANY_PENDING = "too_many_pending"
# Codes clients (the run controller) use in refusals.
REFUSED = "refused"
UNKNOWN_PROGRAM = "unknown_program"
BAD_EXPERIMENT = "bad_experiment"
FAILED = "failed"
BUSY = "busy"
BAD_STATE = "bad_state"
BAD_CONFIG = "bad_config"
NO_SETTINGS = "no_settings"
NO_SUCH_ALARM = "no_such_alarm"
NO_SUCH_RUN = "no_such_run"
# Codes the client library raises to its caller: they never travel on the wire.
TIMEOUT = "timeout"
NO_SERVER = "no_server"
ERROR_CODES = frozenset({
    BAD_JSON, NOT_OBJECT, BAD_FRAMES, TOO_LARGE, NO_CMD, BAD_FIELD, NOT_REGISTERED,
    NAME_TAKEN, BAD_NAME, NO_SUCH_CLIENT, UNKNOWN_COMMAND, CLIENT_LOST, QUEUE_FULL,
    INTERNAL, HANDLER_ERROR, NOT_ALLOWED, THROTTLED, TOO_MANY_CLIENTS, TOO_MANY_PENDING,
})
REFUSAL_CODES = frozenset({REFUSED, UNKNOWN_PROGRAM, BAD_EXPERIMENT, FAILED, BUSY, BAD_STATE, BAD_CONFIG, NO_SETTINGS,
                           NO_SUCH_ALARM, NO_SUCH_RUN})
LOCAL_CODES = frozenset({TIMEOUT, NO_SERVER})

# Commands a connection may send before its `_hello` succeeds.
UNREGISTERED_COMMANDS = frozenset({"_hello", "_ping", "_bye"})

encode = orjson.dumps

# Finds `"id": <string or integer>` near the start of a message too large to parse.
_ID_NEAR_START = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,64}"|-?\d{1,20})')
# Finds `"cmd": "_hello"` in a message not yet parsed.
_HELLO_NEAR_START = re.compile(rb'"cmd"\s*:\s*"_hello"')
NEAR_START = 4096            # bytes of an unparsed message looked at


def decode(data):
    """Parse one message frame into a dict, or raise ProtocolError (bad_json, not_object)."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(BAD_JSON, f"message is not valid JSON: {exc}") from None
    if type(msg) is not dict:
        raise ProtocolError(NOT_OBJECT, f"message must be a JSON object, not {type_name(msg)}")
    return msg


def type_name(value):
    """The JSON name of a decoded value's type, for error messages."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def valid_name(name):
    return type(name) is str and name != SERVER and NAME_RE.match(name) is not None


def valid_id(value):
    if type(value) is str:
        return len(value) <= MAX_ID_LEN
    return type(value) is int and len(str(value)) <= MAX_ID_LEN


def check_envelope(msg):
    """Return (code, text) for the first reserved field that breaks the contract, else None."""
    cmd = msg.get("cmd")
    if cmd is None:
        return NO_CMD, "message has no 'cmd'"
    if type(cmd) is not str or not 0 < len(cmd) <= MAX_CMD_LEN:
        return BAD_FIELD, f"'cmd' must be a string of 1 to {MAX_CMD_LEN} characters"
    to = msg.get("to")
    if to is not None and type(to) is not str:
        return BAD_FIELD, f"'to' must be a string, not {type_name(to)}"
    if "id" in msg and not valid_id(msg["id"]):
        return BAD_FIELD, f"'id' must be a string or integer of at most {MAX_ID_LEN} characters"
    if "re" in msg and not valid_id(msg["re"]):
        return BAD_FIELD, f"'re' must be a string or integer of at most {MAX_ID_LEN} characters"
    return None


def request_id(msg):
    """The message's `id` if it is a valid one, else None (errors then go without `re`)."""
    value = msg.get("id")
    return value if value is not None and valid_id(value) else None


def find_id_in_prefix(data, limit=NEAR_START):
    """The `id` of a message too large to parse, when it stands near the start."""
    match = _ID_NEAR_START.search(data, 0, limit)
    if match is None:
        return None
    try:
        value = orjson.loads(match.group(1))
    except orjson.JSONDecodeError:
        return None
    return value if valid_id(value) else None


def says_hello(data, limit=NEAR_START):
    """Whether a frame not yet parsed names the command `_hello` near its start (only parsing it tells for sure)."""
    return _HELLO_NEAR_START.search(data, 0, limit) is not None


# --- answers -----------------------------------------------------------------

def make_reply(re_id, result=None):
    return {"cmd": "_reply", "re": re_id, "ok": True, "result": result}


def make_refusal(re_id, error, code):
    return {"cmd": "_reply", "re": re_id, "ok": False, "error": error, "code": code}


def make_error(code, error, re_id=None):
    msg = {"cmd": "_error", "error": error, "code": code}
    if re_id is not None:
        msg["re"] = re_id
    return msg


def make_progress(re_id, **data):
    return {"cmd": "_progress", "re": re_id, **data}


@dataclass(frozen=True)
class Answer:
    """A final answer to a request: a `_reply` (ok or not) or a server `_error`."""
    re: object
    ok: bool
    result: object = None
    error: str = ""
    code: str = ""
    from_server: bool = False

    def value(self):
        """The result, or the exception this answer stands for raised."""
        if self.ok:
            return self.result
        raise answer_exception(self)


def parse_answer(msg):
    """Turn a `_reply`, `_error` or `_pong` into an Answer; ProtocolError if it is none of them."""
    cmd = msg.get("cmd")
    if cmd == "_reply":
        if msg.get("ok") is True:
            return Answer(msg.get("re"), True, msg.get("result"))
        return Answer(msg.get("re"), False, error=str(msg.get("error", "refused")),
                      code=str(msg.get("code", "refused")))
    if cmd == "_error":
        return Answer(msg.get("re"), False, error=str(msg.get("error", "error")),
                      code=str(msg.get("code", INTERNAL)), from_server=True)
    if cmd == "_pong":
        return Answer(msg.get("re"), True, "pong")
    raise ProtocolError(BAD_FIELD, f"{cmd!r} is not an answer")


def answer_exception(answer):
    """The exception a requester raises for an answer that is not ok."""
    if not answer.from_server:
        return Refused(answer.error, answer.code)
    if answer.code == NO_SUCH_CLIENT:
        return NoSuchClient(answer.error)
    if answer.code == CLIENT_LOST:
        return ClientLost(answer.error)
    return RequestFailed(answer.error, answer.code)


# --- registration --------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    name: str
    pid: object = None
    host: object = None
    actions: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def make_hello(name, pid=None, host=None, actions=None, meta=None, id=None):
    msg = {"cmd": "_hello", "name": name}
    for key, value in (("pid", pid), ("host", host), ("actions", actions), ("meta", meta), ("id", id)):
        if value is not None:
            msg[key] = value
    return msg


def parse_hello(msg):
    """Validate a `_hello`; raise ProtocolError (bad_name, bad_field) with the reason."""
    name = msg.get("name")
    if not valid_name(name):
        raise ProtocolError(BAD_NAME, f"name {name!r} must match {NAME_RE.pattern} and not be 'server'")
    pid = msg.get("pid")
    if pid is not None and (type(pid) is not int or pid < 0):
        raise ProtocolError(BAD_FIELD, f"'pid' must be a non-negative integer, not {type_name(pid)}")
    host = msg.get("host")
    if host is not None and (type(host) is not str or len(host) > 255):
        raise ProtocolError(BAD_FIELD, "'host' must be a string of at most 255 characters")
    actions = msg.get("actions", {})
    if type(actions) is not dict or not all(type(v) is str for v in actions.values()):
        raise ProtocolError(BAD_FIELD, "'actions' must be an object of command name to description")
    meta = msg.get("meta", {})
    if type(meta) is not dict:
        raise ProtocolError(BAD_FIELD, f"'meta' must be an object, not {type_name(meta)}")
    return Hello(name, pid, host, actions, meta)


def make_welcome(name, instance, heartbeat_s, timeout_s, events):
    return {"name": name, "server": instance, "heartbeat": heartbeat_s,
            "timeout": timeout_s, "events": events}


@dataclass(frozen=True)
class Welcome:
    """The result of a successful `_hello`."""
    name: str
    instance: str
    heartbeat_s: float
    timeout_s: float
    events: object = None


def parse_welcome(result):
    """Read the result of a `_hello`; ProtocolError (bad_field) when it is not a welcome."""
    if type(result) is not dict or type(result.get("server")) is not str:
        raise ProtocolError(BAD_FIELD, "the answer to _hello is not a welcome: it names no server instance")
    try:
        heartbeat_s = float(result.get("heartbeat", DEFAULT_HEARTBEAT_S))
        timeout_s = float(result.get("timeout", DEFAULT_TIMEOUT_S))
    except (TypeError, ValueError):
        raise ProtocolError(BAD_FIELD, "the welcome's 'heartbeat' and 'timeout' must be numbers") from None
    events = result.get("events")
    return Welcome(result.get("name"), result["server"], heartbeat_s, timeout_s,
                   events if type(events) is str and events else None)


# --- liveness -------------------------------------------------------------------

def make_ping(msg_id=None):
    return {"cmd": "_ping"} if msg_id is None else {"cmd": "_ping", "id": msg_id}


def make_pong(re_id=None):
    return {"cmd": "_pong"} if re_id is None else {"cmd": "_pong", "re": re_id}


def parse_ping(msg):
    """The `id` a `_ping` asks to be echoed in its pong (None for a plain heartbeat)."""
    return msg.get("id")


PONG = encode(make_pong())


# --- run transitions -------------------------------------------------------------

TRANSITIONS = ("prepare", "begin", "pause", "resume", "end")


@dataclass(frozen=True)
class Transition:
    """A `_transition` request: `transition` is prepare, begin, pause, resume or end of run `run`."""
    transition: str
    run: object
    comment: str = ""
    params: dict = field(default_factory=dict)
    abort: bool = False
    rejoin: bool = False
    reason: str = ""


def make_transition(transition, run, comment=None, params=None, abort=False, rejoin=False, reason=None):
    msg = {"cmd": "_transition", "transition": transition, "run": run}
    if reason:
        msg["reason"] = reason
    if comment is not None:
        msg["comment"] = comment
    if params is not None:
        msg["params"] = params
    if abort:
        msg["abort"] = True
    if rejoin:
        msg["rejoin"] = True
    return msg


def parse_transition(msg):
    """Read a `_transition`; ProtocolError (bad_field) when the transition is not one of TRANSITIONS."""
    transition = msg.get("transition")
    if transition not in TRANSITIONS:
        raise ProtocolError(BAD_FIELD, f"unknown transition {transition!r}: {', '.join(TRANSITIONS)}")
    comment, params, reason = msg.get("comment"), msg.get("params"), msg.get("reason")
    return Transition(transition, msg.get("run"), comment if type(comment) is str else "",
                      params if type(params) is dict else {}, msg.get("abort") is True, msg.get("rejoin") is True,
                      reason if type(reason) is str else "")


# --- beacon ----------------------------------------------------------------------

@dataclass(frozen=True)
class Beacon:
    experiment: str
    instance: str
    router: str
    events: str
    pid: int
    started: float
    source: str = ""

    def with_source(self, host):
        """The beacon with wildcard hosts in its addresses replaced by the sender's address."""
        return Beacon(self.experiment, self.instance, resolve_wildcard(self.router, host),
                      resolve_wildcard(self.events, host), self.pid, self.started, host)


def make_beacon(experiment, instance, router, events, pid, started):
    return encode({"service": SERVICE, "experiment": experiment, "instance": instance,
                   "router": router, "events": events, "pid": pid, "started": started})


def parse_beacon(data):
    """Parse a beacon datagram; ProtocolError if it is not an Orbit beacon."""
    if len(data) > MAX_BEACON_BYTES:
        raise ProtocolError(TOO_LARGE, f"beacon of {len(data)} bytes exceeds {MAX_BEACON_BYTES}")
    msg = decode(data)
    if msg.get("service") != SERVICE:
        raise ProtocolError(BAD_FIELD, "not an orbit beacon")
    fields = ("experiment", "instance", "router", "events")
    if not all(type(msg.get(key)) is str and msg[key] for key in fields):
        raise ProtocolError(BAD_FIELD, "beacon lacks experiment, instance, router or events")
    pid, started = msg.get("pid"), msg.get("started")
    if type(pid) is not int or type(started) not in (int, float):
        raise ProtocolError(BAD_FIELD, "beacon 'pid' or 'started' has the wrong type")
    return Beacon(msg["experiment"], msg["instance"], msg["router"], msg["events"], pid, float(started))


def resolve_wildcard(address, host):
    """`tcp://*:9820` or `tcp://0.0.0.0:9820` seen from `host` becomes `tcp://host:9820`."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if address.startswith(wildcard):
            return f"tcp://{host}:{address[len(wildcard):]}"
    return address


# --- event stream -----------------------------------------------------------------

def event_topic(kind):
    return f"event.{kind}"


BY_MAX = 64


def parse_by(msg):
    """Who a request acts for: its `by` (an operator's name, for the logs), else its sender."""
    by = msg.get("by", msg.get("from"))
    if not isinstance(by, str) or not 0 < len(by) <= BY_MAX:
        raise Refused(f"'by' must be a name of 1 to {BY_MAX} characters: who asks", BAD_FIELD)
    return by


def published_numbers(prefix, value, out):
    """Every number inside published `value` as (name, float), named `<from>.<topic>.<key>...` (`prefix` is
    `<from>.<topic>`): nested objects and lists joined by dots; bools are not numbers. The names of history and
    alarms."""
    if isinstance(value, bool):
        return out
    if isinstance(value, (int, float)):
        if value == value and abs(value) != float("inf"):
            out.append((prefix, float(value)))
    elif isinstance(value, dict):
        for key, inner in value.items():
            published_numbers(f"{prefix}.{key}", inner, out)
    elif isinstance(value, list):
        for index, inner in enumerate(value[:64]):
            published_numbers(f"{prefix}.{index}", inner, out)
    return out


def make_event(kind, ts, **payload):
    return {**payload, "kind": kind, "ts": ts}


def split_stream_frames(frames):
    """Parse the two frames of the event stream into (topic, object)."""
    if len(frames) != 2:
        raise ProtocolError(BAD_FRAMES, f"event stream messages have 2 frames, not {len(frames)}")
    return frames[0].decode("ascii", "replace"), decode(frames[1])


# --- replay of publications --------------------------------------------------------

REPLAY_LIMIT = 1000          # publications in one page of `_replay`, unless the request says
MAX_REPLAY_LIMIT = 10000


@dataclass(frozen=True)
class ReplayRequest:
    """A `_replay`: the publications after `since` (seconds since the epoch) whose `<from>.<topic>` starts
    with `prefix`, at most `limit` to a page."""
    since: float
    prefix: str = ""
    limit: int = REPLAY_LIMIT


def make_replay(since, prefix="", limit=REPLAY_LIMIT):
    return {"cmd": "_replay", "since": since, "prefix": prefix, "limit": limit}


def parse_replay(msg, now):
    """Read a `_replay` (a negative `since` is that long before `now`); ProtocolError (bad_field) when a field
    has the wrong type or range."""
    since, prefix, limit = msg.get("since"), msg.get("prefix", ""), msg.get("limit", REPLAY_LIMIT)
    if type(since) not in (int, float):
        raise ProtocolError(BAD_FIELD, f"'since' must be seconds since the epoch, or negative: seconds ago, "
                                       f"not {type_name(since)}")
    if type(prefix) is not str:
        raise ProtocolError(BAD_FIELD, f"'prefix' must be a string, not {type_name(prefix)}")
    if type(limit) is not int or not 1 <= limit <= MAX_REPLAY_LIMIT:
        raise ProtocolError(BAD_FIELD, f"'limit' must be an integer from 1 to {MAX_REPLAY_LIMIT}, not {limit!r}")
    return ReplayRequest(now + since if since < 0 else float(since), prefix, limit)


@dataclass(frozen=True)
class ReplayPage:
    """The answer to a `_replay`: `items` (publications as the stream carried them, oldest first); `more` when
    a next page waits, asked for with `since=next`; `kept_from`: every publication since then is held."""
    items: list
    more: bool
    next: float
    kept_from: float


def make_replay_page(items, more, next_since, kept_from):
    return {"items": items, "more": more, "next": next_since, "kept_from": kept_from}


def parse_replay_page(result):
    """Read the result of a `_replay`; ProtocolError (bad_field) when it is not a page of publications."""
    if type(result) is not dict or type(result.get("items")) is not list or type(result.get("more")) is not bool:
        raise ProtocolError(BAD_FIELD, "the answer to _replay is not a page: it lacks 'items' or 'more'")
    if type(result.get("next")) not in (int, float) or type(result.get("kept_from")) not in (int, float):
        raise ProtocolError(BAD_FIELD, "the answer to _replay lacks the times 'next' and 'kept_from'")
    for item in result["items"]:
        if type(item) is not dict or type(item.get("ts")) not in (int, float) \
                or type(item.get("from")) is not str or type(item.get("topic")) is not str:
            raise ProtocolError(BAD_FIELD, "a publication in a _replay page lacks 'from', 'topic' or 'ts'")
    return ReplayPage(result["items"], result["more"], float(result["next"]), float(result["kept_from"]))
