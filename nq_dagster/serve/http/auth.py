"""Who may call what: the bearer key checked against the key store, the role the route needs (viewer <
developer < admin), each key's rate limit (a token bucket counting ticks: a request of n values costs n, any
other request 1) and its cap on requests in flight; and the same two limits per tenant (`tenants.py`: its
`ticks_per_minute` and `concurrent_requests` quotas, a bucket and a count keyed `tenant:<name>`).

`guarded(access, role, handler)` is the dependency a route declares: it makes the endpoint that authenticates,
admits and counts the request, then calls `handler(request, key)`; refusals are `ApiError`s (401, 403, 429).
A successful answer carries the key's `RateLimit-Limit/Remaining/Reset` as a refused one does.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.tenants import Tenants
from nq_dagster.serve.http.tokens import TokenVerifier, looks_like_jwt
from nq_dagster.serve.keys import KeyRecord, KeyStore, TokenBucket, role_allows

Handler = Callable[[Request, KeyRecord], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class Access:
    """The key store, and per key its token bucket and its requests in flight (this process's)."""

    def __init__(self, keys: KeyStore, tokens: TokenVerifier | None = None, tenants: Tenants | None = None):
        """`tokens`: the identity provider's JWTs are accepted beside the keys (see `tokens.py`); `tenants`:
        the tenants' quotas (none without)."""
        self.keys = keys
        self.tokens = tokens
        self.tenants = tenants
        self.buckets: dict[str, TokenBucket] = {}
        self.inflight: collections.Counter[str] = collections.Counter()

    def authenticate(self, headers: Mapping[str, str], role: str, scope_state: dict) -> KeyRecord:
        """The caller's key record; its id goes into the request's state (the access log names it)."""
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise ApiError(
                401,
                "missing API key: send `Authorization: Bearer <key>` (create one with `nq keys create`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        bearer = auth[7:].strip()
        if self.tokens is not None and looks_like_jwt(bearer):
            rec = self.tokens.verify(bearer)  # 401 naming why, 403 without a role
        else:
            rec = self.keys.verify(bearer)
        if rec is None:
            raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        scope_state["key_id"] = rec.id
        if not role_allows(rec.role, role):
            raise ApiError(403, f"this key's role {rec.role!r} may not do this: it needs {role!r} or above")
        return rec

    def _bucket(self, rec: KeyRecord) -> TokenBucket:
        return self._bucket_of(rec.id, rec.rate_per_s, rec.burst)

    def _bucket_of(self, bucket_id: str, rate: float, burst: int) -> TokenBucket:
        """The bucket keyed `bucket_id` (a key's id, or `tenant:<name>`), anew when its limits changed."""
        bucket = self.buckets.get(bucket_id)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self.buckets[bucket_id] = TokenBucket(rate, burst)
        return bucket

    def _tenant_take(self, rec: KeyRecord, cost: float) -> None:
        """The tenant's `ticks_per_minute` quota (a bucket keyed by the tenant): 429 naming it."""
        if rec.tenant is None or self.tenants is None:
            return
        q = self.tenants.quota(rec.tenant)
        if q.ticks_per_minute is None:
            return
        wait = self._bucket_of(f"tenant:{rec.tenant}", q.rate_per_s, q.burst).take(cost)
        if wait > 0:
            after = str(max(1, math.ceil(wait)))
            raise ApiError(
                429,
                f"tenant {rec.tenant!r}: its quota `ticks_per_minute` of {q.ticks_per_minute:g} is spent; "
                f"retry in {wait:.2f} s",
                headers={
                    "Retry-After": after,
                    "RateLimit-Limit": str(q.burst),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": after,
                },
                quota="ticks_per_minute",
            )

    def _tenant_inflight(self, rec: KeyRecord) -> None:
        if rec.tenant is None or self.tenants is None:
            return
        cap = self.tenants.quota(rec.tenant).concurrent_requests
        if cap is not None and self.inflight[f"tenant:{rec.tenant}"] >= cap:
            raise ApiError(
                429,
                f"tenant {rec.tenant!r}: {cap} of its requests are in flight already (its quota "
                "`concurrent_requests`); wait for one",
                headers={"Retry-After": "1"},
                quota="concurrent_requests",
            )

    def admit(self, rec: KeyRecord) -> None:
        """Within the key's rate and its cap on requests in flight, else 429 with Retry-After. A request
        takes one token here; `charge` takes the rest of a request that carries more ticks."""
        wait = self._bucket(rec).take()
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {rec.rate_per_s * 60:g} ticks/min (burst {rec.burst}) reached; "
                f"retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait))), **rate_limit_headers(rec, wait)},
            )
        if self.inflight[rec.id] >= rec.max_concurrent:
            raise ApiError(
                429,
                f"{rec.max_concurrent} requests of this key are in flight already; wait for one",
                headers={"Retry-After": "1"},
            )
        self._tenant_inflight(rec)
        self._tenant_take(rec, 1.0)

    def charge(self, rec: KeyRecord, ticks: int, field: str = "data") -> None:
        """A request of `ticks` values costs `ticks` tokens (issue 26: the limit counted requests, so
        1,000-value requests were never limited); `admit` took the first. More values than the burst can
        ever hold: 413 naming the most a request of this key may carry; else too few tokens now: 429 with
        Retry-After."""
        if ticks > rec.burst:
            raise ApiError(
                413,
                f"{field}: {ticks} values cost {ticks} of this key's rate-limit tokens and its burst is "
                f"{rec.burst}: send at most {rec.burst} values per request (or use a key with a larger "
                "burst)",
                field=field,
            )
        if ticks <= 1:
            return
        wait = self._bucket(rec).take(ticks - 1)
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {rec.rate_per_s * 60:g} ticks/min (burst {rec.burst}) reached: this "
                f"request's {ticks} values need {ticks} tokens; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait))), **rate_limit_headers(rec, wait)},
            )
        self._tenant_take(rec, ticks - 1)

    def enter(self, rec: KeyRecord) -> None:
        """The request is in flight (the key's count, and its tenant's)."""
        self.inflight[rec.id] += 1
        if rec.tenant is not None:
            self.inflight[f"tenant:{rec.tenant}"] += 1

    def leave(self, rec: KeyRecord) -> None:
        self.inflight[rec.id] -= 1
        if rec.tenant is not None:
            self.inflight[f"tenant:{rec.tenant}"] -= 1

    def remaining(self, rec: KeyRecord) -> list[tuple[bytes, bytes]]:
        """The key's RateLimit fields after its request, as raw ASGI headers: its burst, what its bucket holds
        now, the seconds until it is full again."""
        bucket = self.buckets.get(rec.id)
        tokens = bucket.tokens if bucket is not None else float(rec.burst)
        return [
            (b"ratelimit-limit", b"%d" % rec.burst),
            (b"ratelimit-remaining", b"%d" % int(tokens)),
            (b"ratelimit-reset", b"%d" % math.ceil((rec.burst - tokens) / rec.rate_per_s)),
        ]


def guarded(access: Access, role: str, handler: Handler) -> Endpoint:
    """The endpoint of a route that needs `role`: authenticated, admitted, counted in flight while it runs."""

    async def endpoint(request: Request) -> Response:
        key = access.authenticate(request.headers, role, request.scope["state"])
        access.admit(key)
        if key.tenant is None:  # the common case inline: a call here is a measurable share of a no-op request
            access.inflight[key.id] += 1
            try:
                response = await handler(request, key)
            finally:
                access.inflight[key.id] -= 1
        else:
            access.enter(key)
            try:
                response = await handler(request, key)
            finally:
                access.leave(key)
        # appended to the raw list: `headers.update` scans and rebuilds it per field (3x the cost, measured)
        response.raw_headers.extend(access.remaining(key))
        return response

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def rate_limit_headers(rec: KeyRecord, wait: float) -> dict[str, str]:
    """The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers) of a key's refused request: its bucket
    holds `burst` requests and refills at its rate; none is left, the next is allowed in `wait` seconds."""
    return {
        "RateLimit-Limit": str(rec.burst),
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(max(1, math.ceil(wait))),
        "RateLimit-Policy": f"{rec.burst};w={max(1, math.ceil(rec.burst / rec.rate_per_s))}",
    }
