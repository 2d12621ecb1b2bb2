"""Per-client rate limiting: a token bucket per key, in memory.

The API layer calls `RateLimiter.check(client_id)` after authentication (and with the source
address at `/auth/token`, where there is no client yet) and answers 429 with `Retry-After`
when it returns a wait. It is not a middleware because the key is only known once the caller
is authenticated.

The buckets live in the process: with several uvicorn workers each worker has its own, so a
client may send up to `workers` times the configured rate. That is the intended trade-off:
the limit protects each process from one noisy client without a shared store on the request
path. A deployment that needs an exact global limit puts it in the reverse proxy.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Token bucket per key: `burst` requests at once, refilled at `rate_per_minute`.

    Thread-safe (synchronous endpoints run in a thread pool). Memory is bounded: a bucket idle
    long enough to be full again is indistinguishable from a new one and is dropped, and beyond
    `max_keys` the least recently seen key is dropped (it then starts with a full bucket: an
    attacker can gain at most one burst per eviction, which `max_keys` makes expensive).
    """

    def __init__(self, rate_per_minute: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute < 0 or burst < 0:
            raise ValueError("rate_per_minute and burst must not be negative")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate_per_second = rate_per_minute / 60.0
        #: At least one request must fit, or a limiter with burst 0 would refuse everything.
        self.capacity = float(max(burst, 1))
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (tokens, time of last update); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._refill_time = (self.capacity / self.rate_per_second
                             if self.rate_per_second else math.inf)

    @property
    def enabled(self) -> bool:
        """False for rate 0: `check` then always allows."""
        return self.rate_per_second > 0

    def __len__(self) -> int:
        """Number of keys currently tracked (for tests and metrics)."""
        return len(self._buckets)

    def check(self, key: str) -> float | None:
        """Take one token for `key`: None when the request may proceed, otherwise the seconds
        until it may (no token is taken then, so waiting that long always succeeds)."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate_per_second)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = None
            else:
                wait = (1.0 - tokens) / self.rate_per_second
            self._buckets[key] = (tokens, now)  # re-inserted: now the most recently used
            self._evict(now)
        return wait

    def _evict(self, now: float) -> None:
        """Drop buckets that are full again (a few per call, oldest first, so the cost per
        request stays constant) and the oldest beyond `max_keys`."""
        for _ in range(4):
            oldest = next(iter(self._buckets.items()), None)
            if oldest is None:
                break
            key, (_tokens, last) = oldest
            if now - last < self._refill_time:
                break  # the oldest is still refilling, so every newer one is too
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


def retry_after(wait: float) -> str:
    """`Retry-After` value for a wait from `RateLimiter.check`: whole seconds, at least 1
    (RFC 9110 delay-seconds is an integer; rounding down would invite a retry that fails)."""
    return str(max(1, math.ceil(wait)))
