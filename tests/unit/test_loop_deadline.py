"""`worker.loop.deadline.call_within`: results and exceptions pass through; a hung call raises."""

from __future__ import annotations

import threading

import pytest

from worker.loop.deadline import CallHung, call_within


def test_a_call_that_returns_in_time_gives_its_result_or_its_exception() -> None:
    assert call_within(lambda: 42, 5.0, "answer") == 42

    def fail() -> None:
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        call_within(fail, 5.0, "fail")


def test_a_call_still_running_at_the_deadline_raises_call_hung() -> None:
    release = threading.Event()
    with pytest.raises(CallHung, match=r"stuck did not return within 0\.05 s") as caught:
        call_within(release.wait, 0.05, "stuck")
    assert caught.value.name == "stuck"
    release.set()
