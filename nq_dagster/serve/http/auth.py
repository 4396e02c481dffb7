"""Who may call what: the bearer key checked against the key store, the role the route needs (viewer <
developer < admin), each key's rate limit (a token bucket counting ticks: a request of n values costs n, any
other request 1) and its cap on requests in flight, counted by a `serve/limits.py` backend: this process's
memory, or the store the replicas share (`NQ_SERVE_SHARED_STORE`: one budget per key across replicas; when the
store cannot be reached, 503 naming it: fail closed, see `serve/shared.py`); and the same two limits per
tenant (`tenants.py`: its `ticks_per_minute` and `concurrent_requests` quotas, a bucket and a count keyed
`tenant:<name>` in the same backend, so a tenant's quota is shared by the replicas as its keys' limits are).

`guarded(access, role, handler)` is the dependency a route declares: it makes the endpoint that authenticates,
admits and counts the request, then calls `handler(request, key)`; refusals are `ApiError`s (401, 403, 429).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.tenants import Tenants
from nq_dagster.serve.http.tokens import TokenVerifier, looks_like_jwt
from nq_dagster.serve.keys import KeyRecord, KeyStore, role_allows
from nq_dagster.serve.limits import Limits, LocalLimits
from nq_dagster.serve.shared import StoreUnavailable

UNCAPPED = 1 << 30  # a count with no cap (still counted, so that it can be given back)
Handler = Callable[[Request, KeyRecord], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class Access:
    """The key store, and per key its token bucket and its requests in flight (`limits`: this process's, or
    the replicas' shared store)."""

    def __init__(
        self,
        keys: KeyStore,
        tokens: TokenVerifier | None = None,
        tenants: Tenants | None = None,
        limits: Limits | None = None,
    ):
        """`tokens`: the identity provider's JWTs are accepted beside the keys (see `tokens.py`); `tenants`:
        the tenants' quotas (none without); `limits`: where buckets and requests in flight are counted
        (default `LocalLimits`, this process)."""
        self.keys = keys
        self.tokens = tokens
        self.tenants = tenants
        self.limits: Limits = limits if limits is not None else LocalLimits()

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

    def _take(self, rec: KeyRecord, cost: float) -> float:
        try:
            return self.limits.take(rec.id, rec.rate_per_s, rec.burst, cost)
        except StoreUnavailable as exc:
            raise store_down(exc) from None

    def _tenant_take(self, rec: KeyRecord, cost: float) -> None:
        """The tenant's `ticks_per_minute` quota (a bucket keyed by the tenant): 429 naming it."""
        if rec.tenant is None or self.tenants is None:
            return
        q = self.tenants.quota(rec.tenant)
        if q.ticks_per_minute is None:
            return
        try:
            wait = self.limits.take(f"tenant:{rec.tenant}", q.rate_per_s, q.burst, cost)
        except StoreUnavailable as exc:
            raise store_down(exc) from None
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

    def _tenant_enter(self, rec: KeyRecord) -> None:
        """One of the tenant's `concurrent_requests` (always counted, so `leave` can always give it back;
        no cap set: no refusal): 429 naming the quota when its cap is reached."""
        cap = self.tenants.quota(rec.tenant).concurrent_requests if self.tenants is not None else None
        try:
            held = self.limits.acquire(f"tenant:{rec.tenant}", UNCAPPED if cap is None else cap)
        except StoreUnavailable as exc:
            raise store_down(exc) from None
        if not held:
            raise ApiError(
                429,
                f"tenant {rec.tenant!r}: {cap} of its requests are in flight already (its quota "
                "`concurrent_requests`); wait for one",
                headers={"Retry-After": "1"},
                quota="concurrent_requests",
            )

    def admit(self, rec: KeyRecord) -> None:
        """Within the key's rate and its cap on requests in flight, else 429 with Retry-After. A request
        takes one token here and one of the key's slots (given back by `leave`); `charge` takes the rest of
        a request that carries more ticks."""
        try:
            wait, admitted = self.limits.admit(rec.id, rec.rate_per_s, rec.burst, rec.max_concurrent)
        except StoreUnavailable as exc:
            raise store_down(exc) from None
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {rec.rate_per_s * 60:g} ticks/min (burst {rec.burst}) reached; "
                f"retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait))), **rate_limit_headers(rec, wait)},
            )
        if not admitted:
            raise ApiError(
                429,
                f"{rec.max_concurrent} requests of this key are in flight already; wait for one",
                headers={"Retry-After": "1"},
            )
        if rec.tenant is None:
            return
        try:  # the key's slot is held: given back if its tenant refuses
            self._tenant_enter(rec)
        except ApiError:
            self.limits.release(rec.id)
            raise
        try:
            self._tenant_take(rec, 1.0)
        except ApiError:
            self.leave(rec)
            raise

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
        wait = self._take(rec, float(ticks - 1))
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {rec.rate_per_s * 60:g} ticks/min (burst {rec.burst}) reached: this "
                f"request's {ticks} values need {ticks} tokens; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait))), **rate_limit_headers(rec, wait)},
            )
        self._tenant_take(rec, ticks - 1)

    def forward_mark(self, rec: KeyRecord, request_id: str) -> str:
        """The `X-NQ-Forwarded` value of a request this replica admitted and passes to the source's owner: the
        owner does not count it again (with a shared store it would be charged twice to one budget)."""
        return self.keys.sign(f"forwarded {rec.id} {request_id}")

    def forwarded(self, headers: Mapping[str, str], rec: KeyRecord, scope_state: dict) -> bool:
        """Whether this request was admitted and counted by the replica that forwarded it (its mark checks
        out: a client cannot forge it without the server secret)."""
        mark = headers.get("x-nq-forwarded", "")
        if not mark:
            return False
        ok = hmac.compare_digest(mark, self.forward_mark(rec, scope_state.get("request_id", "")))
        scope_state["forwarded"] = ok
        return ok

    def enter(self, rec: KeyRecord) -> None:
        """A request in flight without the key's rate or cap (the key's count, and its tenant's)."""
        self.limits.acquire(rec.id, UNCAPPED)
        if rec.tenant is not None:
            self.limits.acquire(f"tenant:{rec.tenant}", UNCAPPED)

    def leave(self, rec: KeyRecord) -> None:
        """The end of a request `admit` (or `enter`) let in: its slots are free again."""
        self.limits.release(rec.id)
        if rec.tenant is not None:
            self.limits.release(f"tenant:{rec.tenant}")

    def remaining(self, rec: KeyRecord) -> list[tuple[bytes, bytes]]:
        """The key's RateLimit fields after its request, as raw ASGI headers: its burst, what its bucket holds
        now (as last seen: no second round trip to a shared store), the seconds until it is full again."""
        tokens = self.limits.tokens(rec.id)
        tokens = float(rec.burst) if tokens is None else max(0.0, min(float(rec.burst), tokens))
        return [
            (b"ratelimit-limit", b"%d" % rec.burst),
            (b"ratelimit-remaining", b"%d" % int(tokens)),
            (b"ratelimit-reset", b"%d" % math.ceil((rec.burst - tokens) / rec.rate_per_s)),
        ]


def store_down(exc: StoreUnavailable) -> ApiError:
    """The shared store is unreachable: refused (fail closed), never admitted on this replica's own count."""
    return ApiError(503, f"{exc}; requests are refused until it answers", headers={"Retry-After": "1"})


def guarded(access: Access, role: str, handler: Handler) -> Endpoint:
    """The endpoint of a route that needs `role`: authenticated, admitted, counted in flight while it runs."""

    async def endpoint(request: Request) -> Response:
        key = access.authenticate(request.headers, role, request.scope["state"])
        if access.forwarded(request.headers, key, request.scope["state"]):
            return await handler(request, key)  # admitted, charged and in flight on the forwarding replica
        access.admit(key)
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
