"""The program state machine's transition table."""

import pytest

from runcontrol.states import ALLOWED, ChildState, IllegalTransition, check_transition

S = ChildState


@pytest.mark.parametrize("current,new", [
    (S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING), (S.STARTING, S.BACKOFF), (S.RUNNING, S.EXITED),
    (S.EXITED, S.STARTING), (S.EXITED, S.BACKOFF), (S.BACKOFF, S.STARTING), (S.BACKOFF, S.FATAL),
    (S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED), (S.FATAL, S.STARTING),
])
def test_allowed_transitions_pass(current, new):
    assert check_transition(current, new) is new


@pytest.mark.parametrize("current,new", [
    (S.STOPPED, S.RUNNING), (S.RUNNING, S.STARTING), (S.FATAL, S.RUNNING), (S.STOPPING, S.RUNNING),
    (S.STOPPED, S.FATAL),
])
def test_illegal_transitions_raise(current, new):
    with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
        check_transition(current, new)


def test_every_state_has_a_way_out_and_only_known_targets():
    assert set(ALLOWED) == set(ChildState)
    for state, targets in ALLOWED.items():
        assert targets <= set(ChildState) - {S.UNKNOWN}  # UNKNOWN is said of a lost host's programs, never held
        assert targets or state is S.UNKNOWN
