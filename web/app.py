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
                              pause_run {"why"}, resume_run, end_run, abort_run, exclude {"program", "why"},
                              include {"program"}, start, stop, restart, reload, ack, set_config, notify_test,
                              maintenance), `by` the operator; a transition a participant holds (deferring, with
                              progress) is waited for as long as progress comes
  GET  /api/sequencer/CMD?KEY=VALUE  a command of the sequencer that only reads (status, sequences, log), the query
                              parameters its payload
  POST /api/sequencer/CMD {payload}  a command of the sequencer (queue, start, pause, resume, skip, abort, load,
                              dry_run), `by` the operator
  POST /api/programs/NAME/restart
  POST /api/alarms/NAME/ack
  GET  /api/config            every program's settings (values, schema, live ones)
  POST /api/programs/NAME/config {"values": {...}}    change settings (validated, delivered, logged with who)
  GET  /api/catalog?q=CONDITIONS&limit=50&offset=0    runs of the run catalog (`find`; q: `flag=good
                              bias.volts=60 temperature.max<140`, quoted words as a shell takes them)
  GET  /api/catalog.csv?q=, /api/catalog.json?q=      the same query as a download, every page up to EXPORT_MAX runs
  GET  /api/catalog/N/files/I the I-th file of run N's record (`record`), when it is under the experiment's
                              paths.data; a run's record is GET /api/run/record?number=N, its flag POST /api/run/flag
  GET  /api/logbook?limit=20&offset=0&run=N           the logbook's entries, newest first (of run N alone)
  GET  /api/logbook/search?text=WORDS&limit=&offset=  full-text search of the logbook
  GET  /api/logbook/entries/ID?version=V              an entry with its older versions
  GET  /api/logbook/attachments/SHA256                an attachment's bytes (pictures inline, anything else a download)
  POST /api/logbook/notes     multipart/form-data: text, runs ("12, 13"), attachments (files): a note, `by` the
                              operator; the body may be as large as the bus carries to the logbook (NOTE_BODY_*)
  POST /api/logbook/entries/ID  multipart/form-data: text, attachments: a new version of a note
  GET  /metrics               OpenMetrics (or Prometheus text, as the scraper asks)

Errors are JSON `{"error", "code"}` with a 4xx status (a 5xx only when the bus
does not answer). Actions need a logged-in operator and a JSON body (a note: a
form, from this page's origin); each is
logged, and announced as an `operator_action` event, with who did it. The run
controller's commands are reached from its table: one added there is served
here; the sequencer's (clients/sequencer.py) from SEQUENCER_COMMANDS below; the
logbook's (clients/logbook.py) by the routes above, its limits and refusals its
own. Files are served only as a run's record names them or as the logbook
holds them, never from a path the browser gives. Must not block the event loop.
"""

import asyncio
import base64
import csv
import io
import json
import logging
import math
import re
import shlex
import urllib.parse
from pathlib import Path

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from runcontrol.control import commands
from runcontrol.control.commands.base import payload
from runcontrol.control.operator import LOGBOOK
from web import auth
from web.feed import SEQUENCER, BusError
from web.metrics import registry_for

log = logging.getLogger("web")

STATIC = Path(__file__).with_name("static").resolve()
BODY_MAX = 64 * 1024
RUN = "run"
TEXT_MAX = 500
LIMITS = {"n": (1, 1000, 50), "log": (0, 1000, 100), "points": (1, 10000, 500), "limit": (1, 100, 20),
          "offset": (0, 10 ** 9, 0), "run": (0, 10 ** 12, None), "version": (1, 10 ** 9, None)}
CATALOG_LIMITS = {"limit": (1, 1000, 50), "offset": (0, 10 ** 9, 0)}
QUERY_MAX = 2000          # characters of a catalog query
EXPORT_MAX = 10000        # runs in one export of a query
EXPORT_PAGE = 100         # runs asked of find at once: a page with every setting of every program fits a message
LOGBOOK_WAIT_S = 15.0     # a note is on disk before the logbook answers
LOGBOOK_READ_S = 10.0
# A note travels to the logbook in one bus message, its attachments in base64: the body of an upload may be as
# large as that message carries (the server's max_message_bytes, less room for the envelope and the text's escapes).
NOTE_BODY_HEADROOM = 64 * 1024
NOTE_BODY_DEFAULT = 1024 * 1024   # the server's default message limit, until a snapshot tells the server's own
CHUNK = 64 * 1024
SHA256 = re.compile(r"[0-9a-f]{64}")
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "text/plain"}   # an attachment shown in the page
# A file served from a run or the logbook is data, never a page of this origin: no script, no sniffing.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "no-store"}
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


def make_app(feed, client, users, secure_cookies, data=None):
    """`data`: the experiment's paths.data, where a run's files must be to be served (None: none is served)."""
    app = web.Application(client_max_size=BODY_MAX, middlewares=[errors_as_json])
    app["feed"], app["client"], app["users"], app["data"] = feed, client, users, data
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
        web.get("/api/catalog", catalog), web.get("/api/catalog.{kind:csv|json}", catalog_export),
        web.get("/api/catalog/{run}/files/{index}", run_file), web.get("/api/logbook", logbook_entries),
        web.get("/api/logbook/search", logbook_search), web.get("/api/logbook/entries/{entry}", logbook_entry),
        web.get("/api/logbook/attachments/{sha256}", logbook_attachment), web.post("/api/logbook/notes", note),
        web.post("/api/logbook/entries/{entry}", edit_note),
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


def whole(request, key, limits=LIMITS):
    low, high, default = limits[key]
    text = given(request, key)
    if text is None:
        return default
    if not (text.isdecimal() and len(text) <= len(str(high))) or not low <= int(text) <= high:
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
    return logged_in(request), body


def logged_in(request):
    who = user_of(request)
    if who is None:
        raise Problem("log in first: actions need an operator", 401, "not_logged_in")
    return who


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
    # a run's comment, a maintenance window's reason, a pause's why: shown on every page
    for key in ("comment", "reason", "why"):
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


# --- the run catalog ---------------------------------------------------------------------------------


def conditions(request):
    """The catalog query `q` as find's `where`: its words as a shell splits them (`comment~"first light"`)."""
    text = request.query.get("q", "")
    if len(text) > QUERY_MAX:
        raise Problem(f"'q' is {len(text)} characters: a query holds at most {QUERY_MAX}")
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise Problem(f"'q': {exc} (a quote is not closed): {text[:200]!r}") from None


async def catalog(request):
    """A page of the runs the query finds, newest first: find's answer, with the conditions as it took them."""
    where = conditions(request)
    fields = {"where": where, "limit": whole(request, "limit", CATALOG_LIMITS),
              "offset": whole(request, "offset", CATALOG_LIMITS)}
    return web.json_response({**await ask_run(request, "find", fields), "where": where})


async def catalog_export(request):
    """The query's runs as a file to download, CSV (a column per key, as `send.py --csv run find`) or JSON: every
    page of them, the newest EXPORT_MAX at most (`X-Orbit-Total` says how many the query finds)."""
    where, kind = conditions(request), request.match_info["kind"]
    rows, total = await every_page(request, where)
    # thousands of rows: made off the event loop
    body = await asyncio.get_running_loop().run_in_executor(None, export_body, kind, where, rows, total)
    return web.Response(body=body, headers={
        "Content-Type": "text/csv; charset=utf-8" if kind == "csv" else "application/json",
        "X-Orbit-Total": str(total), "Content-Disposition": f'attachment; filename="runs.{kind}"'})


def export_body(kind, where, rows, total):
    if kind == "csv":
        return runs_csv(rows).encode("utf-8")
    return json.dumps({"where": where, "total": total, "runs": rows}).encode()


async def every_page(request, where):
    """(rows, total) of find for `where`, asked a page at a time (an answer must fit one bus message), the pages
    after the first held to the runs it saw (a run ending meanwhile shifts nothing)."""
    found = await ask_run(request, "find", {"where": where, "limit": EXPORT_PAGE, "offset": 0})
    rows, total = found["runs"], found["total"]
    if rows:
        held = [*where, f"run<={rows[0]['run']}"]
        while len(rows) < min(total, EXPORT_MAX) and len(rows) % EXPORT_PAGE == 0:
            page = await ask_run(request, "find", {"where": held, "limit": EXPORT_PAGE, "offset": len(rows)})
            if not page["runs"]:
                break
            rows += page["runs"]
    return rows[:EXPORT_MAX], total


def runs_csv(rows):
    """Rows of find as CSV: a column per key any row has, objects and lists in JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    columns = list(dict.fromkeys(["run", *(key for row in rows for key in row)])) if rows else []
    writer.writerow(columns)
    writer.writerows([json.dumps(v) if isinstance(v, (dict, list)) else v for v in (row.get(c) for c in columns)]
                     for row in rows)
    return out.getvalue()


def data_folder(app):
    """The experiment's paths.data, resolved; Problem when the web program does not know its experiment."""
    if app["data"] is None:
        raise Problem("the web program does not know its experiment's data folder (it was started without "
                      "--experiment or $ORBIT_EXPERIMENT): no run's file is served", 404, "not_found")
    return Path(app["data"]).resolve()


def path_number(request, key):
    text = request.match_info[key]
    if not (text.isdecimal() and len(text) <= 12):
        raise Problem(f"{key} {text[:20]!r} is not a whole number", 404, "not_found")
    return int(text)


async def run_file(request):
    """A file of a run, as its record in the catalog names it (by its place in `files`): only one under the
    experiment's data folder, sent as a download."""
    run, index = path_number(request, "run"), path_number(request, "index")
    files = (await ask_run(request, "record", {"number": run})).get("files") or []
    if index >= len(files) or not isinstance(files[index], dict) or not isinstance(files[index].get("path"), str):
        raise Problem(f"run {run}'s record names {len(files)} file(s): there is no file {index}", 404, "not_found")
    named = files[index]["path"]
    data = data_folder(request.app)
    path = (data / named).resolve()
    if not path.is_relative_to(data):
        log.warning("run %s's record names %s, outside the data folder %s: not served", run, named, data)
        raise Problem(f"run {run}'s file {named} is not under the experiment's data folder: not served", 404,
                      "not_found")
    if not path.is_file():
        raise Problem(f"run {run}'s file {named} is no longer there", 404, "not_found")
    return web.FileResponse(path, headers={**FILE_HEADERS, "Content-Type": "application/octet-stream",
                                           "Content-Disposition": disposition("attachment", path.name)})


def disposition(how, name):
    return f"{how}; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


# --- the logbook ------------------------------------------------------------------------------------


async def ask_logbook(request, cmd, fields, timeout=LOGBOOK_READ_S):
    """The result of the logbook's command `cmd`."""
    return await request.app["feed"].request({**fields, "to": LOGBOOK, "cmd": cmd}, timeout)


async def logbook_entries(request):
    fields = {"limit": whole(request, "limit"), "offset": whole(request, "offset")}
    run = whole(request, "run")
    if run is not None:
        fields["run"] = run
    return web.json_response(await ask_logbook(request, "entries", fields))


async def logbook_search(request):
    text = request.query.get("text", "")
    if not text.strip() or len(text) > QUERY_MAX:
        raise Problem(f"search needs 'text': words, \"a phrase\", pre*, OR, NOT (at most {QUERY_MAX} characters)")
    fields = {"text": text, "limit": whole(request, "limit"), "offset": whole(request, "offset")}
    return web.json_response(await ask_logbook(request, "search", fields))


async def logbook_entry(request):
    fields = {"entry": path_number(request, "entry")}
    version = whole(request, "version")
    if version is not None:
        fields["version"] = version
    return web.json_response(await ask_logbook(request, "entry", fields))


async def logbook_attachment(request):
    """An attachment as the logbook holds it: a picture or plain text shown in the page, anything else a download."""
    digest = request.match_info["sha256"]
    if not SHA256.fullmatch(digest):
        raise Problem("an attachment is named by its sha256: 64 lowercase hexadecimal digits", 404, "not_found")
    held = await ask_logbook(request, "attachment", {"sha256": digest})
    kind = held.get("type") or "application/octet-stream"
    inline = kind in INLINE_TYPES
    headers = {**FILE_HEADERS, "Content-Type": (kind + "; charset=utf-8" if kind == "text/plain" else kind) if inline
               else "application/octet-stream",
               "Content-Disposition": disposition("inline" if inline else "attachment", held.get("name") or digest)}
    return web.Response(body=base64.b64decode(held["base64"]), headers=headers)


async def note(request):
    """A note from an operator's form: its text, the runs it is on, its attachments, handed to the logbook."""
    who = uploader(request)
    form = await note_form(request)
    fields = {"text": form["text"], "by": who, "attachments": form["attachments"]}
    if form["runs"]:
        fields["runs"] = form["runs"]
    asking = ask_logbook(request, "note", fields, LOGBOOK_WAIT_S)
    return await announced(request, who, "note", LOGBOOK, asking)


async def edit_note(request):
    """A new version of a note, from an operator's form (its text, and attachments added to those it had)."""
    who = uploader(request)
    entry = path_number(request, "entry")
    form = await note_form(request)
    fields = {"entry": entry, "text": form["text"], "by": who, "attachments": form["attachments"]}
    return await announced(request, who, "edit", LOGBOOK, ask_logbook(request, "edit", fields, LOGBOOK_WAIT_S))


def uploader(request):
    """The logged-in operator sending a form. A form is what another site's page may post as well: its Origin
    must be this page's."""
    if not request.app["users"].exists():
        raise Problem("this page is read-only: no operator file (python -m web.users add NAME)", 403, "read_only")
    origin = request.headers.get("Origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.host:
        raise Problem(f"a form from {origin[:100]} is not this page's", 403, "foreign_origin")
    return logged_in(request)


def note_body_max(request):
    server = (request.app["feed"].snapshot or {}).get("server") or {}
    message_max = server.get("max_message_bytes") or NOTE_BODY_DEFAULT
    return max(BODY_MAX, (message_max - NOTE_BODY_HEADROOM) * 3 // 4)


async def note_form(request):
    """{text, runs, attachments: [{name, base64}]} of a multipart/form-data body, read a chunk at a time: 413 past
    what one message to the logbook carries. The logbook checks the rest (its own limits, in its refusals)."""
    if request.content_type != "multipart/form-data":
        raise Problem("send a note as multipart/form-data (text, runs, attachments)", 415, "not_multipart")
    most = note_body_max(request)
    too_big = Problem(f"the note with its attachments is over {most:,} bytes, the most one message to the logbook "
                      "carries: attach fewer or smaller files", 413, "request_entity_too_large")
    if request.content_length is not None and request.content_length > most:
        raise too_big
    form, read = {"text": None, "runs": "", "attachments": []}, 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                read += len(chunk)
                if read > most:
                    raise too_big
                data.extend(chunk)
            take_part(form, part, bytes(data))
    except (ValueError, AssertionError, KeyError) as exc:
        raise Problem(f"the form is not multipart/form-data as a browser sends it: {exc}", 400, "bad_form") from None
    if form["text"] is None:
        raise Problem("a note needs 'text'")
    return {**form, "runs": run_numbers(form["runs"])}


def take_part(form, part, data):
    name = part.name
    if name == "attachments":
        if part.filename or data:   # a file input left empty sends an empty part without a name
            form["attachments"].append({"name": part.filename or "attachment",
                                        "base64": base64.b64encode(data).decode("ascii")})
    elif name in ("text", "runs"):
        try:   # a browser's form sends every line break as CRLF
            form[name] = data.decode("utf-8").replace("\r\n", "\n")
        except UnicodeDecodeError:
            raise Problem(f"'{name}' is not UTF-8 text") from None


def run_numbers(text):
    """The runs of a note's `runs` field: whole numbers apart by commas or spaces."""
    words = [w for w in re.split(r"[\s,]+", text) if w]
    for word in words:
        if not (word.isdecimal() and len(word) <= 12):
            raise Problem(f"'runs': {word[:20]!r} is not a run number; write them apart by commas: 12, 13")
    return sorted({int(w) for w in words})
