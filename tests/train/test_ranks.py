"""The bound of the interrupt barrier: where it is read from, and bad values refused in one line."""

import pytest

from echat.train.ranks import BARRIER_TIMEOUT_ENV, DEFAULT_BARRIER_TIMEOUT_S, RankBarrier, barrier_timeout


def test_the_bound_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv(BARRIER_TIMEOUT_ENV, raising=False)
    assert barrier_timeout() == DEFAULT_BARRIER_TIMEOUT_S == 120
    monkeypatch.setenv(BARRIER_TIMEOUT_ENV, "2.5")
    assert barrier_timeout() == 2.5
    assert barrier_timeout(7) == 7.0


@pytest.mark.parametrize("text", ["abc", "0", "-3", "inf", "nan", ""])
def test_a_bound_that_is_not_a_positive_number_names_the_variable(monkeypatch, text):
    monkeypatch.setenv(BARRIER_TIMEOUT_ENV, text)
    with pytest.raises(ValueError, match=f"^{BARRIER_TIMEOUT_ENV}: '{text}' is not a positive number of seconds$"):
        barrier_timeout()


def test_a_bad_argument_names_the_trainer_option():
    with pytest.raises(ValueError, match="^barrier_timeout_s: 0 is not a positive number"):
        barrier_timeout(0)


def test_one_process_has_no_side_group_and_always_passes():
    barrier = RankBarrier(3.0, world=1)
    assert barrier.group is None and barrier.wait()
