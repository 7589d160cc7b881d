"""The monitor: asks every client that offers `monitor` for its values, and appends them to a JSON-lines file.

  python -m clients.monitor --name monitor [--interval 60] [--out FILE]

Each round asks `_list` for the registered clients, sends `monitor` to each that
offers it, and appends one line per answer,
`{"ts", "client", "values"}` (or `"error"`), to `<paths.data>/monitor.jsonl`; and a line
`{"ts", "client", "config_changed": {"by", "changes", "run"}}` for each change of a program's settings.
Publishes `pub.<name>.values` {"rounds", "answers", "failures"} with retain.
"""

import json
import time

from clients.instrument import Instrument, data_folder, serve_instrument
from runcontrol.errors import Refused

ANSWER_WAIT_S = 10.0


class Monitor(Instrument):
    def __init__(self, name, interval_s=60.0, out=None, **kwargs):
        super().__init__(name, **kwargs)
        self.interval_s = interval_s
        self.out = out
        self.counts = {"rounds": 0, "answers": 0, "failures": 0}
        self.next_round = time.monotonic() + min(interval_s, 2.0)
        self.waiting = {}
        self.subscribe("event.config_changed", self._on_config_changed)

    def values(self):
        return dict(self.counts)

    def tick(self, dt):
        now = time.monotonic()
        for name, (pending, asked) in list(self.waiting.items()):
            if now - asked > ANSWER_WAIT_S:
                self.abandon(pending)
                del self.waiting[name]
                self._write(name, error=f"no answer within {ANSWER_WAIT_S:g} s")
        if now >= self.next_round:
            self.next_round = now + self.interval_s
            self.ask_all()

    def cmd_poll(self, msg):
        """Ask every client for its values now, not at the next round."""
        if not self.registered:
            raise Refused("not registered with the server", "not_registered")
        self.ask_all()
        return {"asked": True}

    def ask_all(self):
        self.counts["rounds"] += 1
        self.start({"cmd": "_list"}, on_answer=self._on_list)

    def _on_list(self, answer):
        if not answer.ok:
            return
        for client in answer.result:
            name = client["name"]
            if "monitor" in client.get("actions", {}) and name != self.name and name not in self.waiting:
                pending = self.start({"to": name, "cmd": "monitor"},
                                     on_answer=lambda a, n=name: self._on_values(n, a))
                self.waiting[name] = (pending, time.monotonic())

    def _on_values(self, name, answer):
        self.waiting.pop(name, None)
        if answer.ok:
            self._write(name, values=answer.result)
        else:
            self._write(name, error=answer.error)

    def _on_config_changed(self, topic, event):
        """A program's settings changed: a line of its own, with who changed what."""
        if isinstance(event, dict):
            self._append({"ts": round(time.time(), 3), "client": event.get("program"), "config_changed": {
                k: event.get(k) for k in ("by", "changes", "run")}})

    def _write(self, name, **entry):
        self.counts["answers" if "values" in entry else "failures"] += 1
        self._append({"ts": round(time.time(), 3), "client": name, **entry})

    def _append(self, line):
        with open(self.out, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


def main(argv=None):
    def options(parser):
        parser.add_argument("--interval", type=float, default=60.0, help="seconds between rounds")
        parser.add_argument("--out", help="JSON-lines file (default: <paths.data>/monitor/monitor.jsonl)")

    def make(a):
        out = a.out or data_folder(a.experiment, "monitor") / "monitor.jsonl"
        return Monitor(a.name, a.interval, out, period_s=a.period, experiment=a.experiment, server=a.server)
    return serve_instrument(make, __doc__.split("\n")[0], options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
