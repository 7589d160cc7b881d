"""What the sequencer says of itself (`status`): the queue, the step in progress and the time spent and left."""

import time

from clients.sequences import book as B
from clients.sequences.runner import estimate_s

ENTRY_FIELDS = ("id", "sequence", "given", "steps", "by", "queued", "state", "ended", "why")
FINISHED_SHOWN = 10


def entry_summary(entry):
    return {k: entry.get(k) for k in ENTRY_FIELDS}


def status(book, waiting, now=None):
    """The status answer from `book` and what the step in progress waits for (`waiting`, in words)."""
    now = time.time() if now is None else now
    entries = book.state["entries"]
    entry, paused = book.current(), book.state["paused"]
    current = None
    if entry is not None and entry.get("position"):
        position, steps = entry["position"], book.steps(entry["id"])
        index = position["index"]
        step = steps[index] if index < len(steps) else None
        current = {**entry_summary(entry), "index": index, "phase": position["phase"],
                   "kind": step and step.kind, "where": step and step.where, "loop": step and step.loop,
                   "run": position["data"].get("run"), "attempt": position["data"].get("attempt", 1),
                   "step_since": position.get("since"),
                   "elapsed_s": round(now - (entry.get("started_at") or position.get("since") or now), 1),
                   "left_s": round(max(0.0, sum(estimate_s(s) for s in steps[index:])
                                       - (now - position["since"] if step is not None and position.get("since")
                                          and position["phase"] != "start" else 0.0)), 1),
                   "waiting_for": waiting or None}
    if paused:
        state = "pausing" if current and current["phase"] != "start" else "paused"
    elif book.state["started"]:
        state = "running" if entry else "idle"
    else:
        state = "stopped"
    queued = [e for e in entries if e["state"] == B.WAITING]
    return {"state": state, "paused": paused, "current": current,
            "queue": [entry_summary(e) for e in entries if e["state"] not in B.FINISHED],
            "finished": [entry_summary(e) for e in entries if e["state"] in B.FINISHED][-FINISHED_SHOWN:],
            "queue_left_s": round(sum(sum(estimate_s(s) for s in book.steps(e["id"])) for e in queued), 1)}
