"""Where a key's rate budget and its requests in flight are counted: `LocalLimits` (this process's memory, the
default) or `SharedLimits` (the store every replica shares, `serve/shared.py`: one budget per key, not one
per replica). `http/auth.Access` decides what to refuse and how to say it; a backend only counts.

The interface (`Limits`), keyed by a name (a key's id; `tenant:<name>` for a tenant's quota): `take(name,
rate, burst, cost)` takes `cost` tokens of the bucket `name` (`rate` per second up to `burst`) and returns 0
when it could, else the seconds until it could, taking nothing; `acquire(name, cap)` takes one of `cap`
slots (False when all are taken); `admit(name, rate, burst, cap)` is a take of one token and then, if it
took it, an acquire, as `(wait, acquired)` (one round trip to a shared store instead of two); `release(name)`
gives one back; `tokens(name)` is what the bucket held
after this process's last take (None before one: the RateLimit-Remaining field, without another round trip).
The shared backend raises `StoreUnavailable` when the store cannot be reached.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Protocol

from nq_dagster.serve.keys import TokenBucket
from nq_dagster.serve.shared import SharedStore, StoreUnavailable

log = logging.getLogger("nq.serve")


class Limits(Protocol):
    def take(self, name: str, rate: float, burst: float, cost: float = 1.0) -> float: ...

    def acquire(self, name: str, cap: int) -> bool: ...

    def admit(self, name: str, rate: float, burst: float, cap: int) -> tuple[float, bool]: ...

    def release(self, name: str) -> None: ...

    def tokens(self, name: str) -> float | None: ...


class LocalLimits:
    """A token bucket and a counter of requests in flight per key in this process (a budget per replica)."""

    def __init__(self):
        self.buckets: dict[str, TokenBucket] = {}
        self.inflight: collections.Counter[str] = collections.Counter()

    def take(self, name: str, rate: float, burst: float, cost: float = 1.0) -> float:
        bucket = self.buckets.get(name)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:  # anew when its limits changed
            bucket = self.buckets[name] = TokenBucket(rate, burst)
        return bucket.take(cost)

    def acquire(self, name: str, cap: int) -> bool:
        if self.inflight[name] >= cap:
            return False
        self.inflight[name] += 1
        return True

    def admit(self, name: str, rate: float, burst: float, cap: int) -> tuple[float, bool]:
        wait = self.take(name, rate, burst, 1.0)
        return (wait, False) if wait > 0 else (0.0, self.acquire(name, cap))

    def release(self, name: str) -> None:
        self.inflight[name] -= 1

    def tokens(self, name: str) -> float | None:
        bucket = self.buckets.get(name)
        return None if bucket is None else bucket.tokens


# One message, so one round trip and one implicit transaction. The UPDATE computes the refill from the row it
# locked (in READ COMMITTED a waiting UPDATE re-reads the row its predecessor committed), so two replicas
# taking the last token at once cannot both get it. `now()` is the message's start: a take that waited on the
# row lock counts no refill for the wait (never more tokens than the rate gives). `taken` says whether this
# take took its cost.
TAKE = """
INSERT INTO nq_buckets (key_id, tokens, ts) VALUES (%(k)s, %(burst)s, now()) ON CONFLICT (key_id) DO NOTHING;
UPDATE nq_buckets SET
    tokens = least(%(burst)s, tokens + %(rate)s * greatest(0, extract(epoch FROM now() - ts)))
        - CASE WHEN least(%(burst)s, tokens + %(rate)s * greatest(0, extract(epoch FROM now() - ts)))
            >= %(n)s THEN %(n)s ELSE 0 END,
    taken = CASE WHEN least(%(burst)s, tokens + %(rate)s * greatest(0, extract(epoch FROM now() - ts)))
            >= %(n)s THEN %(n)s ELSE 0 END,
    ts = greatest(ts, now())
WHERE key_id = %(k)s
RETURNING tokens, taken
"""

# The key's slots in use are the sum over live instances (a dead one's are not counted: its lease ran out);
# the advisory lock on the key makes the count and the increment one step across replicas.
ACQUIRE = """
SELECT pg_advisory_xact_lock(hashtext('nq_inflight'), hashtext(%(k)s));
INSERT INTO nq_inflight (key_id, instance, n)
SELECT %(k)s, %(me)s, 1
WHERE (SELECT coalesce(sum(i.n), 0) FROM nq_inflight i JOIN nq_replicas r ON r.instance = i.instance
       WHERE i.key_id = %(k)s AND r.expires_at > now()) < %(cap)s
ON CONFLICT (key_id, instance) DO UPDATE SET n = nq_inflight.n + 1
RETURNING n
"""

# take one token, then (only if taken) one slot: TAKE and ACQUIRE in one message, so one round trip; the last
# statement reads the bucket as the UPDATE left it (a later statement of the same transaction sees it)
ADMIT = (
    TAKE.rsplit("RETURNING", 1)[0]
    + """;
SELECT pg_advisory_xact_lock(hashtext('nq_inflight'), hashtext(%(k)s));
WITH b AS (SELECT tokens, taken FROM nq_buckets WHERE key_id = %(k)s),
ins AS (
    INSERT INTO nq_inflight (key_id, instance, n)
    SELECT %(k)s, %(me)s, 1 FROM b
    WHERE b.taken > 0
      AND (SELECT coalesce(sum(i.n), 0) FROM nq_inflight i JOIN nq_replicas r ON r.instance = i.instance
           WHERE i.key_id = %(k)s AND r.expires_at > now()) < %(cap)s
    ON CONFLICT (key_id, instance) DO UPDATE SET n = nq_inflight.n + 1
    RETURNING n
)
SELECT b.tokens, b.taken, (SELECT count(*) FROM ins) FROM b
"""
)

RELEASE = "UPDATE nq_inflight SET n = greatest(n - %(n)s, 0) WHERE key_id = %(k)s AND instance = %(me)s"


class SharedLimits:
    """The key's bucket and slots in the shared store: one statement message per call (a round trip on the
    calling thread; `bench/limits_bench.py` measures it)."""

    def __init__(self, store: SharedStore):
        self.store = store
        # releases the store missed (it was down): given back by the lease thread once it answers, so a
        # slot is not held for as long as this replica lives
        self._owed: collections.Counter[str] = collections.Counter()
        self._owed_lock = threading.Lock()
        store.after_beat.append(self._settle)
        self._tokens: dict[str, float] = {}

    def take(self, name: str, rate: float, burst: float, cost: float = 1.0) -> float:
        with self.store.cursor() as cur:
            cur.execute(TAKE, {"k": name, "burst": float(burst), "rate": rate, "n": cost})
            tokens, taken = cur.fetchone()
        self._tokens[name] = tokens
        if taken > 0 or cost <= 0:
            return 0.0
        return max(cost - tokens, 0.0) / rate or 1e-3

    def acquire(self, name: str, cap: int) -> bool:
        with self.store.cursor() as cur:
            cur.execute(ACQUIRE, {"k": name, "me": self.store.instance, "cap": cap})
            return cur.fetchone() is not None

    def admit(self, name: str, rate: float, burst: float, cap: int) -> tuple[float, bool]:
        me = self.store.instance
        args = {"k": name, "burst": float(burst), "rate": rate, "n": 1.0, "me": me, "cap": cap}
        with self.store.cursor() as cur:
            cur.execute(ADMIT, args)
            tokens, taken, acquired = cur.fetchone()
        self._tokens[name] = tokens
        if taken <= 0:
            return max(1.0 - tokens, 0.0) / rate or 1e-3, False
        return 0.0, acquired > 0

    def release(self, name: str) -> None:
        try:
            with self.store.cursor() as cur:
                cur.execute(RELEASE, {"k": name, "me": self.store.instance, "n": 1})
        except StoreUnavailable as exc:
            log.warning("shared store: a slot of %s is given back later: %s", name, exc)
            with self._owed_lock:
                self._owed[name] += 1

    def tokens(self, name: str) -> float | None:
        return self._tokens.get(name)

    def _settle(self, conn) -> None:
        with self._owed_lock:
            owed, self._owed = self._owed, collections.Counter()
        try:
            with conn.cursor() as cur:
                while owed:
                    k, n = next(iter(owed.items()))
                    cur.execute(RELEASE, {"k": k, "me": self.store.instance, "n": n})
                    del owed[k]
        finally:
            if owed:
                with self._owed_lock:
                    self._owed.update(owed)
