"""The web program's side of the bus: a snapshot of the system refreshed every second, events handed to the pages.

One snapshot serves every page, `/api/status` and `/metrics`, however many ask:
the server's status, rates, clients and retained values (the notifier's
maintenance windows among them), the run controller's status and the
sequencer's, asked together each second, and the current or last run number
(`last_run`: the status has none in STOP). Each open page has a queue;
the event stream (every kind: a transition's `run_progress` too, as a deferring
participant sends it) and each new snapshot go into every queue as server-sent
event frames, and a page too slow to take them is dropped (it reconnects). A
request answered with progress (a transition held by a deferring participant)
is waited for its timeout from the latest progress. Must not block the event loop.
"""

import asyncio
import logging
import time

import orjson

from runcontrol import protocol
from runcontrol.control.operator import historian_in
from runcontrol.control.view import maintenance_text, maintenance_windows

log = logging.getLogger("web")

REFRESH_S = 1.0
ASK_TIMEOUT_S = 5.0
QUEUE_MAX = 200
SEQUENCER = "sequencer"   # the sequencer program's client name (clients/sequencer.py)
ASKS = {"server": {"cmd": "_status"}, "stats": {"cmd": "_stats"}, "clients": {"cmd": "_list"},
        "retained": {"cmd": "_retained"}, "run": {"to": "run", "cmd": "status"},
        "sequencer": {"to": SEQUENCER, "cmd": "status"}}
LAST_LOGGED = {"to": "run", "cmd": "runs", "n": 1}   # the run log's newest record


class BusError(Exception):
    """A request through the bus got no usable answer: `status` is the HTTP status to answer with."""

    def __init__(self, message, status, code=None):
        super().__init__(message)
        self.status, self.code = status, code


# What a refusal's code means for an HTTP answer. The one to answer not registered, or lost before it answered: the
# bus does not answer (503), as when the web program itself is not connected.
REFUSAL_STATUS = {protocol.UNKNOWN_PROGRAM: 404, protocol.NO_SUCH_ALARM: 404, protocol.NO_SUCH_RUN: 404,
                  protocol.NO_SUCH_CLIENT: 503, protocol.CLIENT_LOST: 503, protocol.BAD_FIELD: 400,
                  protocol.UNKNOWN_COMMAND: 400, protocol.BAD_CONFIG: 400, protocol.BAD_STATE: 409, protocol.BUSY: 409,
                  protocol.FAILED: 409, protocol.REFUSED: 409, protocol.NO_SETTINGS: 409,
                  protocol.NOT_REGISTERED: 409, protocol.THROTTLED: 429}


class Feed:
    def __init__(self, client):
        self.client = client
        self.snapshot = None
        self.encoded = None   # the snapshot as JSON bytes, made once for every request that asks
        self.pages = set()   # an asyncio.Queue per open page
        self.last_run = None   # the current or last run number, kept through STOP
        client.subscribe("event.", self._on_event)

    # --- asking ------------------------------------------------------------------------------

    async def request(self, msg, timeout=ASK_TIMEOUT_S):
        """The result of a request; BusError with the HTTP status that says why there is none."""
        if not self.client.registered:
            raise BusError("not connected to the server yet; try again in a moment", 503)
        try:
            answer = await self._ask(msg, timeout)
        except asyncio.TimeoutError:
            raise BusError(f"{msg.get('to') or 'the server'} did not answer {msg['cmd']!r} within {timeout:g} s",
                           504) from None
        if not answer.ok:
            status = REFUSAL_STATUS.get(answer.code, 409)
            if answer.code == protocol.NO_SUCH_CLIENT and not answer.from_server:
                status = 404   # the one asked answered: a name it does not know (`include` of one not left out)
            raise BusError(answer.error, status, answer.code)
        return answer.result

    async def _ask(self, msg, timeout):
        """The answer to `msg` (a protocol.Answer); TimeoutError after `timeout` seconds, counted from the latest
        progress the other side sent (a run transition held by a deferring participant), as Client.wait counts."""
        loop = asyncio.get_running_loop()
        answered, heard = loop.create_future(), [loop.time()]   # when the request went, then its latest progress

        def progressed(_):
            heard[0] = loop.time()
        pending = self.client.start(msg, on_progress=progressed,
                                    on_answer=lambda answer: answered.done() or answered.set_result(answer))
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(answered), heard[0] + timeout - loop.time())
                except asyncio.TimeoutError:
                    if heard[0] + timeout <= loop.time():
                        raise
        except BaseException:
            self.client.abandon(pending)
            raise

    def historian(self):
        return historian_in((self.snapshot or {}).get("clients"))

    # --- the snapshot ------------------------------------------------------------------------

    async def refresh(self):
        keys = list(ASKS)
        results = await asyncio.gather(*(self.request(ASKS[k], ASK_TIMEOUT_S) for k in keys), return_exceptions=True)
        snap = {"taken": time.time()}
        for key, result in zip(keys, results):
            if isinstance(result, BusError):
                snap[key], snap[f"{key}_error"] = None, str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                snap[key] = result
        await self._keep_run_number(snap["run"])
        snap["last_run"] = self.last_run
        self.snapshot, self.encoded = snap, orjson.dumps(snap, option=orjson.OPT_NON_STR_KEYS)
        self._hand_out("status", page_status(snap))

    async def _keep_run_number(self, status):
        """The run number of the run controller's status, kept when it has none (STOP); before any was seen, the
        run log's newest."""
        if status is None:
            return
        if status.get("run") is not None:
            self.last_run = status["run"]
        elif self.last_run is None:
            records = await self.request(LAST_LOGGED)
            if records and self.last_run is None:   # a run_state event may have told a newer one meanwhile
                self.last_run = records[-1]["run"]

    async def refresh_forever(self, stop):
        while not stop.is_set():
            if self.client.registered:
                try:
                    await self.refresh()
                except BusError as exc:
                    log.warning("cannot refresh the snapshot: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), REFRESH_S)
            except asyncio.TimeoutError:
                pass

    # --- pages -------------------------------------------------------------------------------

    def open_page(self):
        queue = asyncio.Queue(QUEUE_MAX)
        self.pages.add(queue)
        if self.snapshot:
            queue.put_nowait(sse_frame("status", page_status(self.snapshot)))
        return queue

    def close_page(self, queue):
        self.pages.discard(queue)

    def close_pages(self):
        """End every page's stream (the program stops): the pages reconnect to whoever serves next."""
        for queue in list(self.pages):
            self._drop(queue)

    def _on_event(self, topic, event):
        if isinstance(event, dict):
            if event.get("kind") == "run_state" and isinstance(event.get("run"), int):
                self.last_run = event["run"]   # a run prepared and ended between two snapshots too
            self._hand_out("event", event)

    def _hand_out(self, kind, data):
        frame = sse_frame(kind, data)   # made once, whoever watches
        for queue in list(self.pages):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:   # a page that does not read: it is dropped (its stream ends), and reconnects
                self._drop(queue)

    def _drop(self, queue):
        self.pages.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)   # the end of its stream


def sse_frame(kind, data):
    """One server-sent event, as the bytes a page reads."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS) \
        + b"\n\n"


def page_status(snap):
    """What the page shows, from a snapshot: the server, the run, programs, hosts, alarms, rates, sequences, and the
    notifier's open maintenance windows (each with its line as the live view says it)."""
    stats = snap.get("stats") or {}
    maintenance = [{**window, "text": maintenance_text(window, snap["taken"])} for window in maintenance_windows(snap)]
    return {"taken": snap["taken"], "server": snap.get("server"), "run": snap.get("run"),
            "run_error": snap.get("run_error"), "last_run": snap.get("last_run"), "rates": stats.get("total"),
            "dropped": stats.get("dropped"), "sequencer": snap.get("sequencer"),
            "sequencer_error": snap.get("sequencer_error"), "maintenance": maintenance}
