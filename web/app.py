"""The web page's HTTP side: the page, the JSON API behind it, its live stream, operators' actions, `/metrics`.

  GET  /                      the page (static files; nothing fetched from elsewhere)
  GET  /api/status            the last snapshot (server, rates, clients, retained values, the run controller's status,
                              the current or last run number)
  GET  /api/runs?n=50         the run log, newest first
  GET  /api/alarms?log=100    standing alarms, and the alarm log
  GET  /api/events?n=100      the server's last events, newest first
  GET  /api/history?name=N&since=-3600&until=&points=500    a value's history (the historian's buckets)
  GET  /api/stream            server-sent events: `status` each second, `event` for each event
  GET  /api/whoami            {"user", "can_act"}
  POST /api/login {"name", "password"}, POST /api/logout
  GET  /api/run/CMD?KEY=VALUE  any command of the run controller that only reads (runcontrol/control/commands/:
                              status, runs, alarms, config, ..., notifications), the query parameters its payload
  POST /api/run/CMD {payload}  any command of the run controller that acts (prepare_run, begin_run {"comment"},
                              end_run, abort_run, start, stop, restart, reload, ack, set_config, notify_test,
                              maintenance), `by` the operator
  GET  /api/sequencer/CMD?KEY=VALUE  a command of the sequencer that only reads (status, sequences, log), the query
                              parameters its payload
  POST /api/sequencer/CMD {payload}  a command of the sequencer (queue, start, pause, resume, skip, abort, load,
                              dry_run), `by` the operator
  POST /api/programs/NAME/restart
  POST /api/alarms/NAME/ack
  GET  /api/config            every program's settings (values, schema, live ones)
  POST /api/programs/NAME/config {"values": {...}}    change settings (validated, delivered, logged with who)
  GET  /metrics               OpenMetrics (or Prometheus text, as the scraper asks)

Errors are JSON `{"error", "code"}` with a 4xx status (a 5xx only when the bus
does not answer). Actions need a logged-in operator and a JSON body; each is
logged, and announced as an `operator_action` event, with who did it. The run
controller's commands are reached from its table: one added there is served
here; the sequencer's (clients/sequencer.py) from SEQUENCER_COMMANDS below.
Must not block the event loop.
"""

import asyncio
import json
import logging
import math
from pathlib import Path

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from runcontrol.control import commands
from runcontrol.control.commands.base import payload
from web import auth
from web.feed import SEQUENCER, BusError
from web.metrics import registry_for

log = logging.getLogger("web")

STATIC = Path(__file__).with_name("static").resolve()
BODY_MAX = 64 * 1024
RUN = "run"
TEXT_MAX = 500
LIMITS = {"n": (1, 1000, 50), "log": (0, 1000, 100), "points": (1, 10000, 500)}
KEEPALIVE_S = 15.0
# The sequencer's commands served here, each with whether it acts (POST, operators only) or only reads (GET).
SEQUENCER_COMMANDS = {"status": False, "sequences": False, "log": False, "queue": True, "start": True, "pause": True,
                      "resume": True, "skip": True, "abort": True, "load": True, "dry_run": True}
SEQUENCER_WAIT_S = 15.0   # a dry run asks the run controller before it answers


class Problem(Exception):
    """Bad input or a refused action: answered with `status` and the message."""

    def __init__(self, message, status=400, code="bad_request"):
        super().__init__(message)
        self.status, self.code = status, code


def make_app(feed, client, users, secure_cookies):
    app = web.Application(client_max_size=BODY_MAX, middlewares=[errors_as_json])
    app["feed"], app["client"], app["users"] = feed, client, users
    app["sessions"], app["secure_cookies"] = auth.Sessions(), secure_cookies
    app["metrics"], app["metrics_made"] = registry_for(feed), {}
    app.add_routes([
        web.get("/", index), web.get("/favicon.ico", no_icon), web.get("/api/status", status), web.get("/api/runs", runs),
        web.get("/api/alarms", alarms), web.get("/api/events", events), web.get("/api/history", history),
        web.get("/api/stream", stream), web.get("/api/whoami", whoami), web.post("/api/login", login),
        web.post("/api/logout", logout), web.get("/api/run/{cmd}", run_read), web.post("/api/run/{cmd}", run_act),
        web.get("/api/sequencer/{cmd}", sequencer_read), web.post("/api/sequencer/{cmd}", sequencer_act),
        web.post("/api/programs/{name}/restart", restart), web.post("/api/alarms/{name}/ack", ack),
        web.get("/api/config", config), web.post("/api/programs/{name}/config", set_config),
        web.get("/metrics", metrics), web.get("/static/{path:.+}", static_file)])
    return app


@web.middleware
async def errors_as_json(request, handler):
    try:
        return await handler(request)
    except Problem as exc:
        return error(exc.status, str(exc), exc.code)
    except BusError as exc:
        return error(exc.status, str(exc), exc.code or "bus")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason if exc.status != 413 else
                     f"the body is larger than {BODY_MAX} bytes", exc.reason.lower().replace(" ", "_"))


def error(status, message, code):
    return web.json_response({"error": message, "code": code}, status=status)


# --- reading ---------------------------------------------------------------------------------------


async def index(request):
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def no_icon(request):
    return web.Response(status=204)


async def static_file(request):
    """A file of the page. Anything else is the JSON 404 here: a FileResponse finds a file missing only as it
    answers, past the middleware, and would answer an empty 404."""
    path = (STATIC / request.match_info["path"]).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        raise Problem(f"no such file: {request.path[:200]}", 404, "not_found")
    return web.FileResponse(path)


async def status(request):
    feed = request.app["feed"]
    if feed.snapshot is None:
        raise Problem("no snapshot yet: the web program has not reached the server", 503, "not_ready")
    return web.Response(body=feed.encoded, content_type="application/json")


async def runs(request):
    return web.json_response(list(reversed(await ask_run(request, "runs", {"n": whole(request, "n")}))))


async def alarms(request):
    return web.json_response(await ask_run(request, "alarms", {"log": whole(request, "log")}))


async def config(request):
    return web.json_response(await ask_run(request, "config", {}))


async def run_read(request):
    """A command of the run controller that only reads: the query parameters are its payload."""
    module = command_of(request, acts=False)
    fields = query_payload(module.SCHEMA.get("properties", {}), request.query)
    return web.json_response(await ask_run(request, module.NAME, fields))


async def sequencer_read(request):
    """A command of the sequencer that only reads: the query parameters are its payload."""
    name = known_command(request, SEQUENCER_COMMANDS, "the sequencer", acts=False)
    ask = {**query_payload({}, request.query), "to": SEQUENCER, "cmd": name}
    return web.json_response(await request.app["feed"].request(ask, SEQUENCER_WAIT_S))


def command_of(request, acts):
    """The run controller's command the path names."""
    name = known_command(request, {name: module.ACTS for name, module in commands.COMMANDS.items()},
                         "the run controller", acts)
    return commands.COMMANDS[name]


def known_command(request, known, owner, acts):
    """The command the path names, of `known` ({name: whether it acts}); 404 when there is none, 405 when it is not
    for this method."""
    name = request.match_info["cmd"]
    if name not in known:
        raise Problem(f"{owner} has no command {name[:40]!r}: one of {', '.join(known)}", 404, "unknown_action")
    if known[name] != acts:
        how = "POST it as a logged-in operator" if known[name] else "GET it"
        raise Problem(f"{name} {'acts' if known[name] else 'only reads'}: {how}", 405, "method_not_allowed")
    return name


def query_payload(properties, query):
    """A payload from query parameters: a value is JSON (n=5, all=true) unless its field (of the JSON Schema
    `properties`) is text; an empty one is left out (its default)."""
    fields = {}
    for key, text in query.items():
        if not text:
            continue
        wanted = properties.get(key, {}).get("type")
        if wanted == "string" or (isinstance(wanted, list) and "string" in wanted):
            fields[key] = text
        else:
            try:
                fields[key] = json.loads(text)
            except ValueError:
                fields[key] = text
    return payload(fields)


async def ask_run(request, name, fields):
    """The result of the run controller's command `name` with `fields`, waited for as long as its table says."""
    return await request.app["feed"].request({**fields, "to": RUN, "cmd": name}, commands.wait_s(name, fields))


async def events(request):
    return web.json_response(await request.app["feed"].request({"cmd": "_logs", "n": whole(request, "n")}))


async def history(request):
    name = request.query.get("name", "")
    if not name or len(name) > 256:
        raise Problem("history needs 'name': a published number, e.g. cryo.values.temperature")
    feed = request.app["feed"]
    historian = feed.historian()
    if historian is None:
        raise Problem("no historian is registered: there is no history to show", 503, "no_historian")
    ask = {"to": historian, "cmd": "history", "name": name, "points": whole(request, "points"),
           "since": seconds(request, "since", -3600.0)}
    until = seconds(request, "until", None)
    if until is not None:   # none: until now, as the historian takes it
        ask["until"] = until
    return web.json_response(await feed.request(ask, 10.0))


def given(request, key):
    """The text of query parameter `key`; None when it is missing or empty (`until=`): its default then."""
    return request.query.get(key) or None


def whole(request, key):
    low, high, default = LIMITS[key]
    text = given(request, key)
    if text is None:
        return default
    if not (text.isdecimal() and len(text) <= 6) or not low <= int(text) <= high:
        raise Problem(f"'{key}' must be a whole number from {low} to {high}, not {text[:20]!r}")
    return int(text)


def seconds(request, key, default):
    text = given(request, key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise Problem(f"'{key}' must be seconds since the epoch, or negative: seconds ago, not {text[:20]!r}")
    return value


async def stream(request):
    """Server-sent events: the page's live feed."""
    feed = request.app["feed"]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    queue = feed.open_page()
    try:
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if frame is None:
                break
            await response.write(frame)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        feed.close_page(queue)
    return response


async def metrics(request):
    """Made once per snapshot and format, however many scrape it."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    made = request.app["metrics_made"]
    key = ((request.app["feed"].snapshot or {}).get("taken"), content_type)
    if key not in made:
        if len(made) >= 4:
            made.clear()
        made[key] = encoder(request.app["metrics"])
    return web.Response(body=made[key], headers={"Content-Type": content_type})


# --- operators -------------------------------------------------------------------------------------


def user_of(request):
    return request.app["sessions"].who(request.cookies.get(auth.COOKIE))


async def whoami(request):
    return web.json_response({"user": user_of(request), "can_act": request.app["users"].exists()})


async def login(request):
    body = await json_body(request)
    sessions, address = request.app["sessions"], request.remote or "?"
    if not request.app["users"].exists():
        raise Problem("this page is read-only: no operator file (python -m web.users add NAME)", 403, "read_only")
    if not sessions.may_try(address):
        raise Problem("too many failed logins from here; wait a minute", 429, "throttled")
    name = body.get("name")
    if not request.app["users"].check(name, body.get("password")):
        sessions.failed(address)
        log.warning("failed login as %r from %s", str(name)[:64], address)
        raise Problem("wrong name or password", 401, "bad_login")
    response = web.json_response({"user": name})
    response.set_cookie(auth.COOKIE, sessions.open(name), max_age=int(auth.SESSION_S), httponly=True,
                        samesite="Strict", secure=request.app["secure_cookies"], path="/")
    log.info("%s logged in from %s", name, address)
    return response


async def logout(request):
    request.app["sessions"].close(request.cookies.get(auth.COOKIE))
    response = web.json_response({"user": None})
    response.del_cookie(auth.COOKIE, path="/")
    return response


async def json_body(request):
    if request.content_type != "application/json":
        raise Problem("send a JSON body (Content-Type: application/json)", 415, "not_json")
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(f"the body is not valid JSON: {exc}", 400, "bad_json") from None
    if not isinstance(body, dict):
        raise Problem("the body must be a JSON object", 400, "bad_json")
    return body


async def operator(request):
    """The logged-in operator for an action, and its JSON body; 401 (or 403 read-only) otherwise."""
    if not request.app["users"].exists():
        raise Problem("this page is read-only: no operator file (python -m web.users add NAME)", 403, "read_only")
    body = await json_body(request)
    who = user_of(request)
    if who is None:
        raise Problem("log in first: actions need an operator", 401, "not_logged_in")
    return who, body


async def order(request, who, name, fields):
    """Send the run controller's command `name` for operator `who` (its `by`), announced."""
    fields = {**payload(fields), "by": who}
    target = fields.get("program") or fields.get("alarm") or RUN
    return await announced(request, who, name, target, ask_run(request, name, fields))


async def announced(request, who, action, target, asking):
    """Await `asking`, operator `who`'s `action` on `target`; log it and announce it with who asked, whatever the
    answer."""
    client = request.app["client"]
    try:
        result = await asking
    except BusError as exc:
        log.warning("%s: %s %s refused: %s", who, action, target, exc)
        client.send(None, "_event", kind="operator_action", by=who, action=action, target=target, ok=False,
                    error=str(exc), via="web")
        raise
    log.info("%s: %s %s", who, action, target)
    client.send(None, "_event", kind="operator_action", by=who, action=action, target=target, ok=True, via="web")
    return web.json_response(result)


def check_text(body, key):
    text = body.get(key)
    if text is not None and (not isinstance(text, str) or len(text) > TEXT_MAX):
        raise Problem(f"'{key}' must be text of at most {TEXT_MAX} characters")


async def run_act(request):
    """A command of the run controller that acts: the JSON body is its payload, `by` the operator."""
    who, body = await operator(request)
    module = command_of(request, acts=True)
    for key in ("comment", "reason"):   # a run's comment, a maintenance window's reason: shown on every page
        check_text(body, key)
    return await order(request, who, module.NAME, body)


async def sequencer_act(request):
    """A command of the sequencer that acts: the JSON body is its payload, `by` the operator; its refusal is
    answered with its code and text."""
    who, body = await operator(request)
    name = known_command(request, SEQUENCER_COMMANDS, "the sequencer", acts=True)
    check_text(body, "why")
    ask = {**payload(body), "by": who, "to": SEQUENCER, "cmd": name}
    return await announced(request, who, name, SEQUENCER, request.app["feed"].request(ask, SEQUENCER_WAIT_S))


async def restart(request):
    who, _ = await operator(request)
    return await order(request, who, "restart", {"program": request.match_info["name"]})


async def ack(request):
    who, _ = await operator(request)
    return await order(request, who, "ack", {"alarm": request.match_info["name"]})


async def set_config(request):
    who, body = await operator(request)
    return await order(request, who, "set_config", {"program": request.match_info["name"], "values": body.get("values")})
