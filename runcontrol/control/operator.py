"""The operator API: what a shift script needs, over one client connection.

  from runcontrol.control.operator import Operator
  with Operator(experiment="damicm") as op:
      op.prepare_run()
      op.begin_run(comment="dark current", seconds=600)
      for kind, data in op.stream("lta1", "status"):   # ("progress", {...}) ..., then ("result", ...)
          print(kind, data)

Every command of the run controller's table (`commands/`) has a method of its
name here, which sends that command and waits as long as the table says it may
take (a test holds the two together). Refusals (the other side understood and
said no: a state or logic reason) raise `Refused`; failures (no answer, no such
client, the server gone) raise `RequestFailed` or one of its subclasses.
Replies are matched by `id`. Must not hold state of its own beyond the
connection.
"""

import base64
import os
import time
from pathlib import Path

from runcontrol.client.client import Client
from runcontrol.control import commands
from runcontrol.errors import NoSuchClient, RequestTimeout, RunControlError

DEFAULT_TIMEOUT_S = 10.0
HISTORIAN_ROLE = "historian"
LOGBOOK = "logbook"
RUN = "run"
SEQUENCER = "sequencer"


class Operator:
    def __init__(self, experiment=None, server=None, name=None, connect_timeout=10.0,
                 timeout=DEFAULT_TIMEOUT_S):
        self.timeout = timeout
        self.client = Client(name or f"op-{os.getpid()}", experiment=experiment, server=server)
        try:
            self.client.connect(connect_timeout)
        except BaseException:
            self.client.close()
            raise

    # --- the whole system --------------------------------------------------------------

    def status(self):
        """The run controller's status: run state, run number, every program."""
        return self._run("status")

    def programs(self):
        return self.status()["programs"]

    def clients(self):
        """The registered clients, as the server lists them."""
        return self.request(None, "_list")

    def retained(self, prefix=""):
        return self.request(None, "_retained", prefix=prefix)

    def logs(self, n=20):
        """The server's last `n` events."""
        return self.request(None, "_logs", n=n)

    def stats(self):
        return self.request(None, "_stats")

    def snapshot(self, events=40, run_timeout=3.0, optional=None):
        """Everything the live view shows, asked of the server and the run controller at once.

        The requests go out together and are awaited together; `run` is None without
        a run controller (`run_error` says why when it did not answer). `optional`: more
        requests by key (e.g. `history` of the historian), left out of the answer (with
        `<key>_error`) when they fail, as `run` is.
        """
        asks = {"server": {"cmd": "_status"}, "stats": {"cmd": "_stats"}, "clients": {"cmd": "_list"},
                "retained": {"cmd": "_retained"}, "events": {"cmd": "_logs", "n": events},
                "run": {"to": RUN, "cmd": "status"}, **(optional or {})}
        tolerated = {"run", *(optional or {})}
        pending = {key: self.client.start(msg) for key, msg in asks.items()}
        deadline = time.monotonic() + self.timeout
        snap = {"taken": time.time(), "run": None}
        for key, ask in pending.items():
            wait_s = min(run_timeout, self.timeout) if key in tolerated else self.timeout
            try:
                snap[key] = self.client.wait(ask, max(0.0, min(wait_s, deadline - time.monotonic()))).value()
            except RunControlError as exc:
                if key not in tolerated:
                    for rest in pending.values():
                        self.client.abandon(rest)
                    raise
                if not isinstance(exc, NoSuchClient) or key != "run":
                    snap[f"{key}_error"] = str(exc)
        return snap

    def historian(self):
        """The name of the registered client that keeps the history (meta role `historian`), or None."""
        return historian_in(self.clients())

    # --- programs ------------------------------------------------------------------------

    def start(self, program=None):
        """Start `program` (None: every program); answers once each is up."""
        return self._run("start", program=program)

    def stop(self, program=None):
        """Stop `program` (None: every program); answers once each has stopped."""
        return self._run("stop", program=program)

    def restart(self, program):
        """Stop and start `program`; answers once the new process is up."""
        return self._run("restart", program=program)

    def reload(self):
        """Re-read the experiment file and apply the difference."""
        return self._run("reload")

    # --- runs ------------------------------------------------------------------------------

    def prepare_run(self, timeout=None, by=None):
        """STOP -> READY; `by`: who asks, for the run log and the catalog (default: this connection's name)."""
        return self._run("prepare_run", timeout=timeout, by=by)

    def begin_run(self, comment="", timeout=None, by=None, **params):
        """READY -> RUN; keyword arguments other than `comment`, `timeout` and `by` are the run's parameters."""
        return self._run("begin_run", comment=comment, params=params, timeout=timeout, by=by)

    def pause_run(self, why=None, timeout=None, by=None):
        """RUN -> PAUSED: the run stays open; `why` goes into the run log."""
        return self._run("pause_run", why=why, timeout=timeout, by=by)

    def resume_run(self, timeout=None, by=None):
        """PAUSED -> RUN."""
        return self._run("resume_run", timeout=timeout, by=by)

    def end_run(self, timeout=None, by=None):
        return self._run("end_run", timeout=timeout, by=by)

    def abort_run(self, timeout=None, by=None):
        return self._run("abort_run", timeout=timeout, by=by)

    def exclude(self, program, why=None, stop=False, by=None):
        """Leave participant `program` out of the runs prepared from now on (in STOP); `stop`: stop it too."""
        return self._run("exclude", program=program, why=why, stop=stop, by=by)

    def include(self, program, by=None):
        """Take `program` part in runs again from the next prepare_run."""
        return self._run("include", program=program, by=by)

    def runs(self, n=20):
        """The run log: the latest record of each of the last `n` runs."""
        return self._run("runs", n=n)

    # --- alarms ----------------------------------------------------------------------------

    def alarms(self, log=0):
        """The standing alarms, unacknowledged first; with `log`, the answer also has that many lines of the
        alarm log (newest last)."""
        answer = self._run("alarms", log=log)
        return answer if log else answer["alarms"]

    def ack(self, alarm=None, by=None):
        """Acknowledge `alarm` (None: every standing alarm) as `by` (default: this connection's name)."""
        if alarm:
            return self._run("ack", alarm=alarm, by=by)["acked"]
        return self._run("ack", all=True, by=by)["acked"]

    # --- settings ----------------------------------------------------------------------------

    def config(self, program=None):
        """The settings of `program` (values, schema, live settings, problems), or of every program."""
        return self._run("config", program=program)

    def set_config(self, program, values=None, by=None, **settings):
        """Change settings of `program` (`values`, a dict, and/or keyword arguments); answers once it took them."""
        return self._run("set_config", program=program, values={**(values or {}), **settings}, by=by)

    def config_log(self, n=50, program=None):
        """The settings' change log, newest last: `n` lines, of `program` when given."""
        return self._run("config_log", n=n, program=program)

    def run_config(self, run):
        """Every program's settings as run `run` began."""
        return self._run("run_config", run=run)

    def config_diff(self, a, b=None):
        """{program: {setting: [in run a, in run b (or now)]}}."""
        return self._run("config_diff", a=a, b=b)

    # --- the run catalog ----------------------------------------------------------------------------

    def record(self, number):
        """Everything the run catalog keeps of run `number`."""
        return self._run("record", number=number)

    def find(self, *where, limit=None, offset=None, **equals):
        """Runs meeting every condition, newest first: op.find("temperature.max<140", flag="good")."""
        return self._run("find", where=list(where), limit=limit, offset=offset, **equals)

    def flag(self, number, flag, why=None, by=None):
        """Mark run `number`'s data good, bad or unknown, with why."""
        return self._run("flag", number=number, flag=flag, why=why, by=by)

    # --- notifications (through the notifier program) ---------------------------------------------

    def notify_test(self, route, by=None):
        """A test message to every URL of `route`: {"route", "sent": [{"url", "ok", "error"}]}."""
        return self._run("notify_test", route=route, by=by)

    def notifications(self, n=50):
        """What was sent, to whom, and what failed; deliveries waiting; maintenance windows."""
        return self._run("notifications", n=n)

    def maintenance(self, minutes=None, reason=None, alarms=None, programs=None, end=None, by=None):
        """Hold notifications back for `minutes` with a `reason` (all, or of `alarms`/`programs`); `end=True` ends it."""
        return self._run("maintenance", minutes=minutes, reason=reason, alarms=alarms, programs=programs, end=end,
                         by=by)

    # --- sequences (the sequencer program, a client named `sequencer`) ------------------------------

    @property
    def sequences(self):
        """The sequencer's commands: `op.sequences.queue("bias_scan", seconds=30)`, `.start()`, `.pause(at_once=True)`,
        `.resume()`, `.skip()`, `.abort(why)`, `.status()`, `.dry_run()`, `.load(name)`, `.names()`, `.log(n)`."""
        return Sequences(self)

    # --- the logbook (the logbook program, a client named `logbook`) -----------------------------------------

    @property
    def logbook(self):
        """The logbook's commands: `op.logbook.note("cold again", run=12, files=["plot.png"])`, `.search("bias
        AND warm")`, `.entries(run=12)`, `.entry(7)`, `.edit(7, text)`, `.attachment(sha256)`."""
        return Logbook(self)

    def _run(self, cmd, **fields):
        """The result of the run controller's command `cmd` (of the table in `commands/`) with the `fields` that
        are not None, waiting as long as the table says it may take."""
        payload = {key: value for key, value in fields.items() if value is not None}
        wait_s = max(self.timeout, commands.wait_s(cmd, payload))
        return self.call({"to": RUN, "cmd": cmd, **payload}, wait_s)

    # --- any client ------------------------------------------------------------------------

    def send(self, to, cmd, **payload):
        """A one-way message; returns once it is handed to the server."""
        self.client.send(to, cmd, **payload)
        self.client.poll(0)

    def request(self, to, cmd, timeout=None, **payload):
        """The result of `cmd` sent to `to` (None or "server": the server itself)."""
        return self.client.request(to, cmd, timeout or self.timeout, **payload)

    def call(self, msg, timeout=None, on_progress=None):
        """`request` for a whole message dict (it may carry its own `id`)."""
        return self.client.call(msg, timeout or self.timeout, on_progress)

    def stream(self, to, cmd, timeout=None, **payload):
        """Iterate a long request: ("progress", data) for each `_progress`, then ("result", value).

        Raises as `request` does when the answer is a refusal or never comes.
        """
        pending = self.client.start({"to": to, "cmd": cmd, **payload})
        seen = 0
        answer = None

        def progressed():
            return len(pending.progress) > seen or pending.answer is not None
        while answer is None:
            self._wait_for(progressed, pending, timeout or self.timeout, f"{to} did not answer {cmd!r}")
            while seen < len(pending.progress):
                yield "progress", {k: v for k, v in pending.progress[seen].items()
                                   if k not in ("cmd", "re", "from", "to", "ts")}
                seen += 1
            answer = pending.answer
        yield "result", answer.value()

    def _wait_for(self, condition, pending, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                self.client.abandon(pending)
                raise RequestTimeout(f"{what} within {timeout:g} s")
            self.client.poll(max(0.0, deadline - time.monotonic()))

    def close(self):
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Sequences:
    """The sequencer's commands, each sent to the client `sequencer` (see clients/sequencer.py)."""

    def __init__(self, op, name=SEQUENCER):
        self.op, self.name = op, name

    def queue(self, sequence, by=None, **variables):
        """Queue `sequence` (a name in the sequences folder, or a path) with its variables; the queued entry."""
        return self._ask("queue", sequence=sequence, variables=variables, by=by)

    def start(self):
        return self._ask("start")

    def pause(self, at_once=False, why=None):
        """After the current step, or `at_once` (a run in progress ends; the step is taken again on resume)."""
        return self._ask("pause", at_once=at_once, why=why)

    def resume(self):
        return self._ask("resume")

    def skip(self):
        return self._ask("skip")

    def abort(self, why=None):
        return self._ask("abort", why=why)

    def status(self):
        return self._ask("status")

    def dry_run(self, sequence=None, **variables):
        """The verdict on `sequence` (or the whole queue): ok, problems with their paths, steps, estimate_s."""
        return self._ask("dry_run", sequence=sequence, variables=variables or None)

    def load(self, sequence, **variables):
        return self._ask("load", sequence=sequence, variables=variables or None)

    def names(self):
        return self._ask("sequences")["sequences"]

    def log(self, n=50):
        return self._ask("log", n=n)

    def _ask(self, cmd, **fields):
        payload = {key: value for key, value in fields.items() if value is not None}
        return self.op.call({"to": self.name, "cmd": cmd, **payload})


class Logbook:
    """The logbook's commands, each sent to the client `logbook` (see clients/logbook.py)."""

    def __init__(self, op, name=LOGBOOK):
        self.op, self.name = op, name

    def note(self, text, run=None, runs=None, files=(), by=None):
        """Write a note (Markdown) on `run`, on `runs` or on none, with `files` (paths) attached; the entry."""
        return self._ask("note", text=text, run=run, runs=runs, by=by,
                         attachments=[attachment(path) for path in files] or None)

    def edit(self, entry, text, files=(), by=None):
        """A new version of note `entry`, with `files` attached beside those it had; the entry."""
        return self._ask("edit", entry=entry, text=text, by=by,
                         attachments=[attachment(path) for path in files] or None)

    def entry(self, entry, version=None):
        """Entry `entry` as it stands (or as `version` was), with its older versions."""
        return self._ask("entry", entry=entry, version=version)

    def entries(self, limit=20, offset=0, run=None):
        """The entries newest first, notes and runs' entries together (of `run` alone when given)."""
        return self._ask("entries", limit=limit, offset=offset, run=run)

    def search(self, text, limit=20, offset=0):
        """Entries whose text matches `text` (words, "a phrase", prefix*, OR, NOT), newest first."""
        return self._ask("search", text=text, limit=limit, offset=offset)

    def attachment(self, sha256):
        """An attachment: {"sha256", "name", "size", "type", "data"} (its bytes)."""
        answer = dict(self._ask("attachment", sha256=sha256))
        answer["data"] = base64.b64decode(answer.pop("base64"))
        return answer

    def _ask(self, cmd, **fields):
        payload = {key: value for key, value in fields.items() if value is not None}
        # at least DEFAULT_TIMEOUT_S: the live view's short timeout is no time for a note written to disk
        return self.op.call({"to": self.name, "cmd": cmd, **payload}, max(self.op.timeout, DEFAULT_TIMEOUT_S))


def attachment(path):
    """A file as the logbook takes an attachment: {"name": its name, "base64": its bytes}."""
    path = Path(path)
    return {"name": path.name, "base64": base64.b64encode(path.read_bytes()).decode("ascii")}


def historian_in(clients):
    """The historian's name among the server's list of clients (`_list`), or None."""
    for client in clients if isinstance(clients, list) else []:
        meta = client.get("meta") if isinstance(client, dict) else None
        if isinstance(meta, dict) and meta.get("role") == HISTORIAN_ROLE:
            return client.get("name")
    return None
