"""The job state machine's table: every path the docs describe is allowed, nothing leaves a final state."""

from asympo.jobs.records import FINAL_STATES
from asympo.jobs.states import TRANSITIONS, can_move


def test_the_documented_lifecycle_is_allowed():
    for a, b in [("queued", "starting"), ("starting", "running"), ("running", "paused"), ("paused", "running"),
                 ("running", "succeeded"), ("starting", "paused"), ("queued", "cancelled"),
                 ("starting", "cancelled"), ("paused", "cancelled"), ("running", "failed")]:  # fmt: skip
        assert can_move(a, b), (a, b)


def test_final_states_are_final_and_nothing_goes_back_to_queued():
    for state in FINAL_STATES:
        assert not TRANSITIONS[state]
    assert not any(can_move(s, "queued") for s in TRANSITIONS)
    assert not can_move("queued", "running") and not can_move("paused", "succeeded")
    assert not can_move("queued", "paused")  # only cancel applies to a queued job
