"""The one backoff rule: full jitter under an exponential ceiling, a cap, and Retry-After as a floor."""
from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from ingest.backoff import backoff_delay


@given(attempt=st.integers(min_value=1, max_value=100_000), base=st.floats(0.01, 60), cap=st.floats(0.1, 3600),
       seed=st.integers(0, 2**32))
def test_delay_stays_under_the_exponential_ceiling_and_the_cap(attempt: int, base: float, cap: float,
                                                                 seed: int) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert 0 <= delay <= min(cap, base * 2 ** min(attempt - 1, 1000))


@given(attempt=st.integers(1, 1000), retry_after=st.floats(0, 10_000), seed=st.integers(0, 2**32))
def test_retry_after_is_a_floor_even_above_the_cap(attempt: int, retry_after: float, seed: int) -> None:
    delay = backoff_delay(attempt, base=1, cap=60, retry_after=retry_after, rng=random.Random(seed))
    assert delay >= retry_after
    assert delay <= max(60, retry_after)


def test_jitter_is_full_not_a_fixed_step() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, base=1, cap=100, rng=rng) for _ in range(2000)]
    # Ceiling 8 s at the 4th attempt; full jitter spreads over (almost) all of [0, 8].
    assert max(delays) <= 8
    assert min(delays) < 0.2 and max(delays) > 7.8
    assert 3.5 < sum(delays) / len(delays) < 4.5


def test_ceiling_doubles_per_attempt_until_the_cap() -> None:
    rng = random.Random(1)
    tops = [max(backoff_delay(a, base=2, cap=20, rng=rng) for _ in range(500)) for a in (1, 2, 3, 4, 5, 6)]
    assert [round(t) for t in tops] == [2, 4, 8, 16, 20, 20]
