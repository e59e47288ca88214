"""Server choice and the circuit breaker, on real (idle) channels: no RPC is made."""

from __future__ import annotations

import random
import time

import numpy as np

from offload.endpoints import Backoff, CircuitBreaker, Endpoint, EndpointPool, parse_servers


def _pool(*addresses: str) -> EndpointPool:
    return EndpointPool([Endpoint(a, tls=None, options=[]) for a in addresses])


def test_parse_servers(monkeypatch):
    assert parse_servers("a:1, b:2,,a:1") == ["a:1", "b:2"]
    monkeypatch.setenv("OFFLOAD_SERVERS", "x:1,y:2")
    assert parse_servers(None) == ["x:1", "y:2"]


def test_least_expected_wait_wins():
    pool = _pool("a:1", "b:2")
    a, b = pool.endpoints
    a.latency, b.latency = 0.010, 0.002
    a.outstanding, b.outstanding = 0, 3  # b: 4 x 2 ms = 8 ms < a: 1 x 10 ms
    assert pool.choose() is b
    b.outstanding = 6  # 14 ms > 10 ms
    assert pool.choose() is a
    assert pool.choose(avoid={"a:1"}) is b  # a server that just failed this request


def test_breaker_opens_after_consecutive_failures_and_backs_off():
    breaker = CircuitBreaker(threshold=3, cooldown=2.0, max_cooldown=5.0)
    now = 100.0
    for _ in range(2):
        breaker.failure(now)
    assert breaker.closed(now)
    breaker.failure(now)
    assert not breaker.closed(now + 1.9)
    assert breaker.closed(now + 2.0)
    breaker.failure(now + 2.0)  # fails again on the retry: cooldown doubles
    assert not breaker.closed(now + 5.9)
    assert breaker.closed(now + 6.0)
    breaker.failure(now + 6.0)
    assert breaker.open_until == now + 6.0 + 5.0  # capped
    breaker.success()
    assert breaker.failures == 0


def test_open_breakers_are_skipped_and_all_open_still_answers():
    pool = _pool("a:1", "b:2")
    a, b = pool.endpoints
    now = time.monotonic()
    for _ in range(3):
        a.breaker.failure(now)
    assert {pool.choose() for _ in range(20)} == {b}
    for _ in range(3):
        b.breaker.failure(now)
    assert pool.choose() is min((a, b), key=lambda e: e.breaker.open_until)
    a.record_probe(True)  # a health probe that succeeds closes the breaker at once
    assert pool.choose() is a


def test_backoff_has_full_jitter_within_the_cap():
    """Attempt n waits uniform(0, min(cap, base·2^n)): every delay inside that range, and
    their quartiles where a uniform distribution puts them (a constant delay, zero or the
    bound, fails)."""
    backoff = Backoff(base=0.1, cap=1.0)
    state = random.getstate()
    random.seed(20261130)  # Backoff draws from the random module; seeded, this cannot flake
    try:
        draws = {attempt: np.array([backoff.delay(attempt) for _ in range(2000)])
                 for attempt in (0, 1, 2, 3, 4, 9)}
    finally:
        random.setstate(state)
    for attempt, bound in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = draws[attempt]
        assert delays.min() >= 0
        assert delays.max() <= bound
        # Each quartile's standard error is ~0.01·bound for 2000 draws: 0.05·bound is 5σ.
        np.testing.assert_allclose(np.quantile(delays, [0.25, 0.5, 0.75]),
                                   [bound / 4, bound / 2, 3 * bound / 4], atol=0.05 * bound)
