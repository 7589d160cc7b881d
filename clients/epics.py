"""The epics program: Orbit on EPICS Channel Access, for a facility's tools (archivers, displays, alarm handlers).

  python -m clients.epics [--name epics] [--experiment FILE]

Serves, under the experiment's `epics.prefix`, every published number `epics.export` names, as a process
variable named after it with dots as colons (DAMICM:cryo:values:temperature): its value and units as published,
the bus's time of the publication, and the severity of the run controller's alarms on it (MAJOR for an alarm,
MINOR for a warning; INVALID once its publisher left, until it publishes again); `run.state` (an enum) and
`run.number`; and the settings of `epics.writable` (`<program>.config.<setting>`), the only ones a put may
change: a put becomes the run controller's `set_config` by `epics (user@host)` (the names Channel Access gives),
and its refusal (the settings schema, a setting frozen during a run, the program) fails the put with the reason.
Imports each channel of `epics.import` with a monitor and publishes it, retained, on the topic of its `as`: null
while it is disconnected or INVALID, its last value again every `epics.republish` seconds while it does not
change (see clients/epicsbridge/imported.py). caproto's asyncio server and client, bound as the experiment says
(loopback by default); no CA repeater is started. Command: `status`.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

import experiments
from caproto import Forbidden
from clients.epicsbridge.board import Board, put_by, setting_value, split_setting, watches
from clients.epicsbridge.caclient import Monitors
from clients.epicsbridge.caserver import PutRefused, Server, ca_environment
from clients.epicsbridge.imported import Imports
from runcontrol import logsetup
from runcontrol.client import Client
from runcontrol.client.aio import ask, serve
from runcontrol.errors import ConfigError

log = logging.getLogger("clients.epics")

CONTROLLER = "run"
REFRESH_S = 10.0        # the run state, the standing alarms and the settings are asked again this often
JOINED_WAIT_S = 1.0     # after the run controller or a program with writable settings registered, ask then
PUT_TIMEOUT_S = 15.0    # a put waits this long for the run controller (which waits 10 s for the program)
NAMES_SHOWN = 1000
ASK_AGAIN_S = 30.0      # a question unanswered this long is asked anew
GONE = ("client_left", "client_lost")
ALARM_EVENTS = ("alarm_raised", "alarm_cleared", "alarm_acked")


class Bridge(Client):
    def __init__(self, name, spec, **kwargs):
        super().__init__(name, meta={"role": "epics"}, **kwargs)
        self.epics = spec.epics
        self.board = Board(self.epics.prefix, self.epics.export, self.epics.writable, watches(spec.alarms))
        self.imports = Imports(self.epics.imports, self.epics.republish_s)
        programs = {split_setting(name)[0] for name in self.epics.writable}
        self.setting_clients = {p.client for p in spec.programs if p.name in programs and p.client}
        self.server = None    # made in the event loop
        self.monitors = Monitors([i.pv for i in self.epics.imports], self._connection, self._value, self._units)
        for item in self.epics.imports:
            if item.units is not None:
                self.board.units[f"{name}.{item.name}"] = item.units
        self.asking = {}      # what is being asked of the server or the run controller -> (its Pending, since)
        self.subscribe("pub.", self._on_published)
        for prefix in ("event.run_state", "event.alarm_", "event.config_changed", "event.client_"):
            self.subscribe(prefix, self._on_event)
        self.timers.every(REFRESH_S, self._refresh)
        self.timers.every(min(1.0, self.epics.republish_s / 2), self._republish)

    # --- the bus: what is served -----------------------------------------------------------------------------

    def _on_registered(self, welcome, was_registered):
        super()._on_registered(welcome, was_registered)
        self._ask("_list", {"cmd": "_list"}, self._seed)
        self._refresh()
        self._published(self.imports.all_known(time.monotonic()))   # a restarted server holds none of them

    def _seed(self, answer):
        """The retained values as they stand; those whose publisher is not registered are served INVALID."""
        if not answer.ok or not isinstance(answer.result, list):
            return
        names = (c.get("name") for c in answer.result if isinstance(c, dict))
        registered = sorted((n for n in names if isinstance(n, str)), key=len, reverse=True)   # dots: host.daq2

        def take(answer):
            if not answer.ok or not isinstance(answer.result, dict):
                return
            for key, held in answer.result.items():
                if not isinstance(held, dict) or not isinstance(held.get("ts"), (int, float)):
                    continue
                sender = next((n for n in registered if key.startswith(f"{n}.")), None)
                sender = sender or key.partition(".")[0]
                self.board.take_publication(sender, key[len(sender) + 1:], held.get("data"), held["ts"])
                if sender not in registered:
                    self.board.publisher_gone(sender)
            self._changed()
        self._ask("_retained", {"cmd": "_retained"}, take)

    def _refresh(self):
        """The run state and number, the standing alarms and the writable settings, asked anew (events can be
        missed: a restarted run controller, a stream that fell behind)."""
        self._ask("status", {"to": CONTROLLER, "cmd": "status"}, self._took_status)
        if self.epics.writable:
            self._ask("config", {"to": CONTROLLER, "cmd": "config"}, self._took_config)

    def _took_status(self, answer):
        if answer.ok and isinstance(answer.result, dict):
            self.board.take_run(answer.result.get("state"), answer.result.get("run"), time.time())
            if isinstance(answer.result.get("alarms"), list):
                self.board.take_alarms(answer.result["alarms"])
            self._changed()

    def _took_config(self, answer):
        if answer.ok and isinstance(answer.result, dict):
            now = time.time()
            for program, info in answer.result.items():
                self.board.take_settings(program, info, now)
            self._changed()

    def _ask(self, what, msg, on_answer):
        """One request of each kind at a time (one unanswered for long is abandoned and asked anew)."""
        if not self.registered:
            return
        if what in self.asking:
            pending, since = self.asking[what]
            if time.monotonic() - since < ASK_AGAIN_S:
                return
            self.abandon(pending)

        def answered(answer):
            self.asking.pop(what, None)
            on_answer(answer)
        self.asking[what] = (self.start(msg, on_answer=answered), time.monotonic())

    def _on_published(self, topic, event):
        if isinstance(event, dict) and isinstance(event.get("from"), str) and isinstance(event.get("topic"), str):
            ts = event.get("ts") if isinstance(event.get("ts"), (int, float)) else time.time()
            self.board.take_publication(event["from"], event["topic"], event.get("data"), ts)
            self._changed()

    def _on_event(self, topic, event):
        if not isinstance(event, dict):
            return
        kind, ts = event.get("kind"), event.get("ts") if isinstance(event.get("ts"), (int, float)) else time.time()
        if kind == "run_state":
            self.board.take_run(event.get("state"), event.get("run"), ts)
        elif kind in ALARM_EVENTS:
            self.board.take_alarm(event)
        elif kind == "config_changed" and isinstance(event.get("program"), str):
            self.board.take_config_changed(event["program"], event.get("changes"), ts)
        elif kind in GONE and isinstance(event.get("name"), str):
            self.board.publisher_gone(event["name"])
        elif kind == "client_joined" and (event.get("name") == CONTROLLER or event.get("name") in self.setting_clients):
            self.timers.after(JOINED_WAIT_S, self._refresh)
        self._changed()

    def _changed(self):
        if self.server is not None:
            self.server.poke()

    # --- Channel Access: puts --------------------------------------------------------------------------------

    async def _put(self, served, value, who):
        """A put on a writable setting: the run controller's set_config, or PutRefused with its reason."""
        host, user = who
        by = put_by(user, host)
        program, setting = split_setting(served.name)
        try:
            wanted = setting_value(served, value)
        except (TypeError, ValueError):
            log.warning("put %s = %r by %s refused: not a value of that setting", served.pv, value, by)
            raise PutRefused(f"bad_field: {value!r} is not a value of {served.name}") from None
        msg = {"to": CONTROLLER, "cmd": "set_config", "program": program, "values": {setting: wanted}, "by": by}
        try:
            answer = await ask(self, msg, PUT_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("put %s = %r by %s: the run controller did not answer", served.pv, wanted, by)
            raise PutRefused(f"timeout: the run controller did not answer within {PUT_TIMEOUT_S:g} s") from None
        if not answer.ok:
            log.warning("put %s = %r by %s refused (%s): %s", served.pv, wanted, by, answer.code, answer.error)
            raise PutRefused(f"{answer.code}: {answer.error}")
        log.info("put %s = %r by %s: accepted %s", served.pv, wanted, by, (answer.result or {}).get("changes"))

    # --- Channel Access: imports ---------------------------------------------------------------------------

    def _connection(self, pv, connected):
        self._published(self.imports.connection(pv, connected, time.monotonic()))

    def _value(self, pv, values, severity):
        self._published(self.imports.took(pv, values, severity, time.monotonic()))

    def _units(self, pv, units):
        """An imported channel's units, as its IOC gives them: served with it where it is exported again."""
        self.imports.took_units(pv, units)
        channel = self.imports.channels[pv]
        self.board.units[f"{self.name}.{channel.name}"] = channel.units

    def _republish(self):
        self._published(self.imports.due(time.monotonic()))

    def _published(self, items):
        for topic, data in items:
            self.publish(topic, data, retain=True)

    # --- commands ---------------------------------------------------------------------------------------------

    def cmd_status(self, msg):
        """What is served (how many process variables, their first 1000 names, the writable ones) and imported
        (each channel: connected, severity, units, value)."""
        served = sorted(self.board.served.values(), key=lambda s: s.pv)
        return {"prefix": self.epics.prefix, "served": len(served), "names": [s.pv for s in served[:NAMES_SHOWN]],
                "writable": [s.pv for s in served if s.writable], "imports": self.imports.describe(),
                "interfaces": list(self.epics.interfaces),
                "port": self.server.context.port if self.server is not None else None}

    # --- the loop ---------------------------------------------------------------------------------------------

    async def run(self):
        """Serve until SIGTERM or SIGINT; raises OSError when Channel Access cannot be served."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.server = Server(self.board, self._put, self.epics.interfaces)
        tasks = [asyncio.ensure_future(serve(self, stop)), asyncio.ensure_future(self.server.run(stop))]
        try:
            await self.monitors.start()
            await asyncio.wait([*tasks, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            await self.monitors.close()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result


class ExpectedRefusals(logging.Filter):
    """caproto logs a refused put with its traceback: the bridge logs its own line instead."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], (PutRefused, Forbidden)))


def run_loop(main):
    """uvloop where installed (a tenth less CPU a served update here), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.epics", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=None, help="client name (default: the experiment's epics.client)")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    logging.getLogger("caproto").setLevel(logging.WARNING)
    logging.getLogger("caproto.circ").addFilter(ExpectedRefusals())
    try:
        spec = experiments.load(args.experiment) if args.experiment else None
        if spec is None or spec.epics is None:
            raise ConfigError("the experiment has no epics section: nothing to serve or import")
    except ConfigError as exc:
        print(f"epics: {exc}", file=sys.stderr)
        return 2
    os.environ.update(ca_environment(spec.epics))   # caproto reads its settings from the environment
    bridge = Bridge(args.name or spec.epics.client, spec, experiment=args.experiment)
    try:
        run_loop(bridge.run())
    except OSError as exc:
        print(f"epics: cannot serve Channel Access on {', '.join(spec.epics.interfaces)} port "
              f"{spec.epics.server_port}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
