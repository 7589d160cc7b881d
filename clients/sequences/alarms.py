"""What alarms do to a sequence: the standing alarms as the run controller says them, and each sequence's rules.

A sequence's `on_alarm` says, per alarm (`alarms`) or for any (`default`), what
a raised alarm does: `ignore`, `pause` (at once), `retry` (the run in progress
is aborted and the step taken again), `abort`; a `run` step's `abort_on` makes
its alarms at least a pause. `suspend` names alarms that hold the sequence: no
step starts while one stands (active, or cleared and not yet acknowledged), nor
while an alarm it retries after stands. Holds no queue and sends nothing.
"""

IGNORE, PAUSE, RETRY, ABORT = "ignore", "pause", "retry", "abort"


class AlarmRules:
    def __init__(self):
        self.standing = {}       # alarm name -> its last record or event

    def take_listing(self, alarms):
        """The run controller's `alarms` answer: the standing alarms, all of them."""
        self.standing = {a["alarm"]: a for a in alarms if isinstance(a, dict) and isinstance(a.get("alarm"), str)}

    def take_event(self, event):
        """An `alarm_*` event; the alarm's name when it was just raised, else None."""
        name = event.get("alarm")
        if not isinstance(name, str):
            return None
        if event.get("kind") == "alarm_raised" or event.get("state") == "active" or not event.get("acked"):
            self.standing[name] = event
        else:
            self.standing.pop(name, None)
        return name if event.get("kind") == "alarm_raised" else None

    @staticmethod
    def policy(entry, alarm, step=None):
        """What `alarm` raised does to `entry` (a queue entry, with the `on_alarm` of its sequence) at `step`."""
        on_alarm = entry.get("on_alarm") or {}
        policy = on_alarm.get("alarms", {}).get(alarm, on_alarm.get("default", IGNORE))
        if policy == IGNORE and step is not None and step.kind == "run" and alarm in step.spec.get("abort_on", ()):
            return PAUSE
        return policy

    def holding(self, entry):
        """The standing alarms that hold `entry` before its next step: its suspenders, and those it retries after."""
        on_alarm = entry.get("on_alarm") or {}
        holding = set(on_alarm.get("suspend", ())) | {a for a in self.standing if self.policy(entry, a) == RETRY}
        return sorted(a for a in holding if a in self.standing)
