"""Sending one message to one Apprise URL, on a thread of its own, so a slow mail server never blocks the loop.

`Deliverer.send(job)` queues (id, url, title, body); the thread calls Apprise
and puts (id, ok, error) where the loop reads them (`results()`), waking it
through a pipe (`fileno()`). Besides Apprise's own services, `orbitfile://PATH`
appends each message as a JSON line to PATH (relative to the working
directory: the notifier's is the experiment's state folder): a sink that needs
no mail server. Knows no alarm and no
rule.
"""

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

import apprise
from apprise.decorators import notify

TIMEOUT_S = 20.0


@notify(on="orbitfile", name="Orbit's file sink")
def _to_file(body, title, notify_type, meta, *args, **kwargs):
    path = Path(meta.get("host", "") + meta.get("fullpath", ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"ts": round(time.time(), 3), "title": title, "body": body}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return True


def deliver(url, title, body):
    """(ok, error) of one message to one URL."""
    sender = apprise.Apprise()
    if not sender.add(url):
        return False, "not a URL Apprise knows (see https://github.com/caronc/apprise/wiki)"
    with apprise.LogCapture(level=logging.WARNING) as said:
        try:
            ok = bool(sender.notify(body=body, title=title))
        except Exception as exc:   # a service plugin's fault is one failed delivery, never the notifier's end
            return False, f"{type(exc).__name__}: {exc}"
        lines = [line.split(" - ", 2)[-1] for line in said.getvalue().splitlines() if line.strip()]
    return ok, None if ok else ("; ".join(lines[-3:]) or "refused")


class Deliverer:
    def __init__(self):
        self._jobs = queue.Queue()
        self._results = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._work, daemon=True, name="deliveries")
        self._thread.start()

    def fileno(self):
        return self._wake_r

    def send(self, job_id, url, title, body):
        self._jobs.put((job_id, url, title, body))

    def results(self):
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        out = []
        while not self._results.empty():
            out.append(self._results.get_nowait())
        return out

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job_id, url, title, body = job
            ok, error = deliver(url, title, body)
            self._results.put((job_id, ok, error))
            os.write(self._wake_w, b"x")

    def close(self):
        self._jobs.put(None)
        self._thread.join(TIMEOUT_S)
        os.close(self._wake_r)
        os.close(self._wake_w)
