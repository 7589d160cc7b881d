"""The notifier: tells people of alarms when nobody watches the screen, by mail, chat or any Apprise URL.

  python -m clients.notifier --name notifier [--state var/run/notifier]

It follows the run controller's standing alarms (asked every second, and at
once on each alarm event), applies the experiment's `notify` rules
(clients/notify/rules.py), and sends each message to every URL of its route
from a thread of its own (clients/notify/delivery.py). A message accepted is on
disk before it is sent (clients/notify/book.py): killed meanwhile, the notifier
sends it after its restart, at least once. A failed delivery is tried again
with backoff; past `retry.alarm_after` tries it counts as failing, published as
`<name>.delivery.failing`, which raises the alarm `notify.delivery`. Maintenance
windows hold messages back. While the system is well it calls the heartbeat URL
(the dead man's switch). Commands: `test`, `notifications`, `maintenance`
(also through the run controller: `notify_test`, `notifications`, `maintenance`).
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import experiments
from clients.notify import rules
from clients.notify.book import BookError, NotifyBook
from clients.notify.delivery import Deliverer
from experiments.checks import fill_secrets
from runcontrol import logsetup, protocol
from runcontrol.client import Client, Refused, required
from runcontrol.errors import ConfigError

log = logging.getLogger("clients.notifier")

CONTROLLER = "run"
LOOK_EVERY_S = 1.0        # the standing alarms are asked this often (and at once on an alarm event)
HEARTBEAT_TIMEOUT_S = 10.0
MAX_MINUTES = 7 * 24 * 60
REASON_MAX = 500
TEST = "test"


class Notifier(Client):
    def __init__(self, name, spec, state, **kwargs):
        super().__init__(name, actions={"test": "send a test message to a route (route)",
                                        "notifications": "what was sent, to whom, and what failed (n)",
                                        "maintenance": "hold messages back for a time (minutes, reason, alarms, "
                                                       "programs), or end it (end: true)"}, **kwargs)
        self.spec, self.notify = spec, spec.notify
        self.watched = {alarm.name: alarm.value for alarm in spec.alarms}   # so a program's alarms are known
        self.book = NotifyBook(state)
        self.deliverer = Deliverer()
        self.watch(self.deliverer.fileno(), self._take_results)
        self.sending = set()         # ids of deliveries handed to the deliverer
        self.tests = {}              # id of a test delivery -> the Deferred answer of `test`
        self.standing = []
        self.alarms_heard = None     # when the run controller last listed its alarms
        self.asking = False
        self._published = None
        self.subscribe("event.alarm_", lambda topic, event: self._look())
        self.timers.every(LOOK_EVERY_S, self._look)
        if self.notify.heartbeat_url:
            self.timers.every(self.notify.heartbeat_s, self._heartbeat)

    # --- the alarms, and what they cause -----------------------------------------------------------

    def _look(self):
        if self.asking or not self.registered:
            self._send_due()
            return
        self.asking = True
        self.start({"to": CONTROLLER, "cmd": "alarms"}, on_answer=self._took_alarms)

    def _took_alarms(self, answer):
        self.asking = False
        if answer.ok and isinstance(answer.result, dict) and isinstance(answer.result.get("alarms"), list):
            self.standing, self.alarms_heard = answer.result["alarms"], time.monotonic()
            self._apply_rules()
        self._send_due()

    def _apply_rules(self):
        now = time.time()
        self._expire_maintenance(now)
        before = {k: (dict(v["told"]), v["cleared_told"]) for k, v in self.book.occurrences.items()}
        messages = rules.due(self.book.occurrences, self.standing, self.notify.rules, self.book.maintenance, now,
                             self.watched)
        after = {k: (dict(v["told"]), v["cleared_told"]) for k, v in self.book.occurrences.items()}
        if messages:
            self.book.accept([item for message in messages for item in self._items(message)])
            for message in messages:
                log.info("%s of %s to %s", message.kind, message.alarm.get("alarm"), message.route)
        elif before != after:
            self.book.save()

    def _items(self, message):
        title, body = rules.text(message, self.notify.link, self.spec.name)
        return [{"route": message.route, "index": index, "kind": message.kind, "alarm": message.alarm.get("alarm"),
                 "title": title, "body": body} for index in range(len(self.notify.routes[message.route]))]

    # --- deliveries -------------------------------------------------------------------------------

    def _send_due(self):
        now = time.time()
        for delivery in self.book.deliveries:
            if delivery["id"] in self.sending or delivery["next_at"] > now:
                continue
            urls = self.notify.routes.get(delivery["route"], ())
            if delivery["index"] >= len(urls):   # the route changed since: nothing to send it to
                self.book.delivered(delivery, True, None, 0)
                continue
            try:
                url = self._url(urls[delivery["index"]])
            except (OSError, ValueError, KeyError) as exc:   # the secrets file changed since the experiment loaded
                retry_s = min(self.notify.retry_first_s * 2 ** delivery["attempts"], self.notify.retry_max_s)
                self.book.delivered(delivery, False, f"secrets {self.notify.secrets}: {exc!r}", retry_s)
                continue
            self.sending.add(delivery["id"])
            self.deliverer.send(delivery["id"], url, delivery["title"], delivery["body"])

    def _url(self, template):
        if self.notify.secrets is None:
            return template
        return fill_secrets(template, json.loads(self.notify.secrets.read_text(encoding="utf-8")))

    def _take_results(self):
        for delivery_id, ok, error in self.deliverer.results():
            self.sending.discard(delivery_id)
            delivery = next((d for d in self.book.deliveries if d["id"] == delivery_id), None)
            if delivery is None:
                continue
            retry_s = min(self.notify.retry_first_s * 2 ** delivery["attempts"], self.notify.retry_max_s)
            if not ok:
                log.warning("delivery %d to %s (%s of %s) failed, try %d: %s", delivery_id, delivery["route"],
                            delivery["kind"], delivery["alarm"], delivery["attempts"] + 1, error)
            self.book.delivered(delivery, ok, error, retry_s)
            answer = self.tests.pop(delivery_id, None)
            if answer is not None:
                answer(ok, error)
        self._publish_figures()

    def _publish_figures(self):
        failing = sum(1 for d in self.book.deliveries if d["attempts"] >= self.notify.alarm_after)
        figures = {"failing": failing, "pending": len(self.book.deliveries)}
        if figures != self._published:
            self.publish("delivery", figures, retain=True)
            self._published = figures

    # --- the dead man's switch ----------------------------------------------------------------------

    def well(self):
        """Whether the system is well enough to say so outside: the server and the run controller answer, and
        (if `quiet_only`) no alarm of severity alarm stands unacknowledged."""
        if not self.registered or self.alarms_heard is None \
                or time.monotonic() - self.alarms_heard > max(2 * LOOK_EVERY_S, self.notify.heartbeat_s / 2):
            return False
        return not (self.notify.heartbeat_quiet_only and any(
            a.get("severity") == "alarm" and a.get("state") == "active" and not a.get("acked") for a in self.standing))

    def _heartbeat(self):
        if self.well():
            threading.Thread(target=call, args=(self._url(self.notify.heartbeat_url), self.notify.heartbeat_url),
                             daemon=True).start()

    # --- maintenance --------------------------------------------------------------------------------

    def _expire_maintenance(self, now):
        ended = [w for w in self.book.maintenance if w["until"] <= now]
        if ended:
            self.book.state["maintenance"] = [w for w in self.book.maintenance if w["until"] > now]
            self.book.save()
            for window in ended:
                self._said("maintenance_ended", f"maintenance ended: {window['reason']}", window=window)
            self._publish_maintenance()

    def _publish_maintenance(self):
        self.publish("maintenance", {"active": len(self.book.maintenance), "windows": self.book.maintenance},
                     retain=True)

    def _said(self, kind, message, **fields):
        self.send(None, "_event", kind=kind, message=message, **fields)

    # --- commands -----------------------------------------------------------------------------------

    def cmd_test(self, msg):
        route = required(msg, "route")
        if not isinstance(route, str) or route not in self.notify.routes:
            raise Refused(f"no route {route!r} (routes: {', '.join(self.notify.routes)})", protocol.BAD_FIELD)
        by = str(msg.get("by") or msg.get("from"))
        message = rules.Message(route, TEST, {"alarm": "test", "severity": "warning", "state": "active",
                                              "raised": time.time(), "message": f"a test message asked by {by}"})
        title, body = rules.text(message, self.notify.link, self.spec.name)
        items = [{"route": route, "index": i, "kind": TEST, "alarm": "test", "title": title, "body": body}
                 for i in range(len(self.notify.routes[route]))]
        self.book.accept(items)
        reply, results = self.defer(msg), {}

        def answer_when_tried(item):
            def tried(ok, error):
                results[item["index"]] = {"url": item["index"], "ok": ok, **({"error": error} if error else {})}
                if len(results) == len(items):
                    reply.resolve({"route": route, "sent": [results[i] for i in sorted(results)]})
            return tried
        for item in items:
            self.tests[item["id"]] = answer_when_tried(item)
        self._send_due()
        return reply

    def cmd_notifications(self, msg):
        n = msg.get("n", 50)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise Refused(f"'n': {n!r} must be a whole number >= 0", protocol.BAD_FIELD)
        pending = [{k: d[k] for k in ("id", "route", "kind", "alarm", "title", "created", "attempts", "next_at",
                                      "error")} for d in self.book.deliveries]
        return {"pending": pending, "sent": self.book.log(n) if n else [], "maintenance": self.book.maintenance,
                "failing": sum(1 for d in self.book.deliveries if d["attempts"] >= self.notify.alarm_after)}

    def cmd_maintenance(self, msg):
        by = str(msg.get("by") or msg.get("from"))
        if msg.get("end"):
            ended, self.book.state["maintenance"] = self.book.maintenance, []
            if ended:
                self.book.save()
                self._said("maintenance_ended", f"maintenance ended by {by}", by=by)
                self._publish_maintenance()
            self._look()
            return {"ended": ended}
        minutes, reason = required(msg, "minutes"), required(msg, "reason")
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= MAX_MINUTES:
            raise Refused(f"'minutes': {minutes!r} must be a number of minutes, more than 0 and at most "
                          f"{MAX_MINUTES}", protocol.BAD_FIELD)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX:
            raise Refused(f"'reason': say why notifications are held back, in at most {REASON_MAX} characters",
                          protocol.BAD_FIELD)
        lists = {key: msg.get(key) or [] for key in ("alarms", "programs")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise Refused(f"'{key}' must be a list of names", protocol.BAD_FIELD)
        now = time.time()
        window = {"from": round(now, 3), "until": round(now + 60 * minutes, 3), "reason": reason.strip(), "by": by,
                  **lists}
        self.book.maintenance.append(window)
        self.book.save()
        what = ", ".join(lists["alarms"] + lists["programs"]) or "all notifications"
        self._said("maintenance", f"maintenance by {by} for {minutes:g} min ({what}): {reason.strip()}",
                   window=window)
        self._publish_maintenance()
        return window

    def close(self):
        self.deliverer.close()
        super().close()


def call(url, shown):
    """Call the heartbeat `url`; a failure is logged with `shown` (the URL as written, without its secrets)."""
    try:
        with urllib.request.urlopen(url, timeout=HEARTBEAT_TIMEOUT_S) as answer:
            answer.read(1024)
    except OSError as exc:
        log.warning("heartbeat %s: %s", shown, str(exc).replace(url, shown))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.notifier", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=None, help="client name (default: the experiment's notify.client)")
    parser.add_argument("--experiment", default=os.environ.get("ORBIT_EXPERIMENT"))
    parser.add_argument("--state", help="where the outbox is kept (default: <paths.state>/notifier)")
    args = parser.parse_args(argv)
    logsetup.configure("INFO", sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        spec = experiments.load(args.experiment) if args.experiment else None
        if spec is None or spec.notify is None:
            raise ConfigError("the experiment has no notify section: nothing to send")
        state = Path(args.state) if args.state else spec.paths.state / "notifier"
        spec.paths.state.mkdir(parents=True, exist_ok=True)
        os.chdir(spec.paths.state)   # orbitfile://NAME writes to <paths.state>/NAME
        notifier = Notifier(args.name or spec.notify.client, spec, state, experiment=args.experiment)
    except (ConfigError, BookError) as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return 2
    try:
        notifier.run_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
