"""What requests and answers look like to a client: a request awaiting its answer, an answer given later, a run.

Owns `Pending` (a request sent, waiting for its final answer), `Deferred` (a
handler's promise to answer later), `Run` (what the run hooks get) and
`AnswerMemory` (what was answered to whom, so a resent request runs once).
Must not do I/O: the client core sends what they produce.
"""

import collections
import time

from runcontrol import protocol
from runcontrol.errors import RequestFailed


class NameTaken(RequestFailed):
    def __init__(self, message):
        super().__init__(message, protocol.NAME_TAKEN)


class Pending:
    """A request waiting for its final answer; `progress` collects `_progress` messages."""

    __slots__ = ("id", "to", "cmd", "data", "answer", "progress", "on_progress", "on_answer")

    def __init__(self, msg_id, to, cmd, data, on_progress, on_answer=None):
        self.id, self.to, self.cmd, self.data = msg_id, to, cmd, data
        self.answer = None
        self.progress = []
        self.on_progress = on_progress
        self.on_answer = on_answer


class Deferred:
    """A reply given later: a handler returns `client.defer(msg)` and calls `resolve` or `refuse` when done.

    The client keeps serving (pings, other requests) meanwhile, so a slow
    command never makes its program look hung.
    """

    __slots__ = ("_answer", "_progress", "to", "id", "done")

    def __init__(self, msg, answer, progress):
        self._answer, self._progress = answer, progress
        self.to, self.id = msg.get("from"), msg.get("id")
        self.done = False

    def resolve(self, result=None):
        self._finish(protocol.make_reply(self.id, result))

    def refuse(self, error, code=protocol.REFUSED):
        self._finish(protocol.make_refusal(self.id, error, code))

    def progress(self, **data):
        if not self.done:
            self._progress({"id": self.id, "from": self.to}, **data)

    def _finish(self, reply):
        if not self.done:
            self.done = True
            if self.id is not None:
                self._answer(self.to, reply)


class Run:
    """What `on_prepare`, `on_begin`, `on_pause`, `on_resume` and `on_end` get: the run, and the message that
    carried it.

    `abort` is set on an `end` that aborts; `rejoin` when the run controller tells a
    client that (re)joined during a run where the run is; `reason` says why a run
    ends other than by an operator's `end_run` (the experiment being stopped).
    """

    __slots__ = ("number", "transition", "comment", "params", "abort", "rejoin", "reason", "msg")

    def __init__(self, transition, msg):
        self.msg = msg
        self.number = transition.run
        self.transition = transition.transition
        self.comment = transition.comment
        self.params = transition.params
        self.abort = transition.abort
        self.rejoin = transition.rejoin
        self.reason = transition.reason


RUN_STATE_AFTER = {"prepare": "READY", "begin": "RUN", "pause": "PAUSED", "resume": "RUN", "end": "STOP"}


class AnswerMemory:
    """The requests a client served, by `(from, id)`, and what it answered: a repeat is answered again, never re-run.

    A request seen again (its sender resent it after a server restart) is answered
    with the same bytes; one still being worked on is answered once, when done.
    Answers are kept `window_s` seconds, at most `size` of them and `max_bytes` in all
    (the oldest forgotten first); a request still being worked on is never forgotten.
    """

    WORKING = None

    def __init__(self, window_s=300.0, size=10000, max_bytes=16 << 20, clock=time.monotonic):
        self.window_s, self.size, self.max_bytes, self.clock = window_s, size, max_bytes, clock
        self._answered = collections.OrderedDict()   # (from, id) -> (answer bytes, when), oldest first
        self._working = set()
        self._bytes = 0

    def begin(self, key):
        """True for a request not seen before (now marked as being worked on); False for a repeat."""
        self._forget_old()
        if key in self._working or key in self._answered:
            return False
        self._working.add(key)
        return True

    def answer_of(self, key):
        """What was answered to `key`, or None while it is still being worked on (or unknown)."""
        entry = self._answered.get(key)
        return entry[0] if entry else None

    def answered(self, key, data):
        if key in self._working:
            self._working.discard(key)
            self._answered[key] = (data, self.clock())
            self._bytes += len(data)
            self._forget_old()

    def _forget_old(self):
        horizon = self.clock() - self.window_s
        while self._answered:
            data, when = next(iter(self._answered.values()))
            if when >= horizon and len(self._answered) <= self.size and self._bytes <= self.max_bytes:
                return
            self._bytes -= len(self._answered.popitem(last=False)[1][0])
