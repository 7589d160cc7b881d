"""The timer heap, on a clock the test moves (a core without I/O; the loops that use it are tested end to end)."""

from runcontrol.timers import Timers


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_timers_run_in_time_order_once_and_cancelled_ones_never():
    clock, ran = Clock(), []
    timers = Timers(clock)
    timers.after(2, lambda: ran.append("b"))
    timers.after(1, lambda: ran.append("a"))
    late = timers.after(3, lambda: ran.append("never"))
    timers.at(101, lambda: ran.append("a2"))     # equal times: in the order they were set
    assert timers.next_due() == 101 and timers.wait_s(10) == 1
    late.cancel()
    clock.now = 105
    assert timers.run_due() == 3 and ran == ["a", "a2", "b"]
    assert timers.next_due() is None and timers.wait_s(10) == 10 and timers.run_due() == 0


def test_every_repeats_without_bunching_after_a_late_turn_and_stops_when_cancelled():
    clock, ran = Clock(), []
    timers = Timers(clock)
    handle = timers.every(1, lambda: ran.append(clock.now))
    clock.now = 101
    timers.run_due()
    clock.now = 105.5                 # the loop was away: one turn now, the next a period later
    timers.run_due()
    assert ran == [101, 105.5] and timers.next_due() == 106.5
    handle.cancel()
    clock.now = 200
    timers.run_due()
    assert ran == [101, 105.5]
