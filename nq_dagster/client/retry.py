"""The client's waits between attempts (HTTP retries, WebSocket reconnections)."""

from __future__ import annotations

import random

import httpx


class Backoff:
    """Waits between attempts: the server's Retry-After when it sent one (capped at `cap_s`), else
    `base_s * 2**attempt` with full jitter."""

    def __init__(self, retries: int = 4, base_s: float = 0.25, cap_s: float = 30.0, seed: int | None = None):
        self.retries, self.base_s, self.cap_s = retries, base_s, cap_s
        self._rng = random.Random(seed)

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        after = response.headers.get("retry-after") if response is not None else None
        if after is not None:
            try:
                return min(self.cap_s, max(0.0, float(after)))
            except ValueError:
                pass  # an HTTP date: fall back to the backoff
        return self._rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
