"""The HTTP side of the client: `Client` (sync) and `AsyncClient` over httpx, answers parsed into the models
of `nq_dagster.serve.http.schemas` (the ones the OpenAPI document publishes), errors raised as `NqApiError`.

Retries: a 429 (rate limit) or 503 (models still loading, an owner replica unreachable) means the server did
not process the request, so it is sent again, after the server's `Retry-After` when it gives one, else after
an exponential backoff with jitter; so is a request whose connection could not be opened. Anything else is
answered at once. A re-posted tick is safe anyway: the server answers it from the stored record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from nq_dagster.client.retry import Backoff
from nq_dagster.client.ws import Message, subscribe
from nq_dagster.serve.http import schemas as s

M = TypeVar("M", bound=BaseModel)
RETRY_STATUS = (429, 503)
Timestamp = str | int | float


class NqApiError(Exception):
    """An error answer: `status`, the server's `message`, the request's `field` at fault, the `request_id` to
    find it in the server's log."""

    def __init__(
        self, status: int, message: str, field: str | None = None, request_id: str = "", details=None
    ):
        super().__init__(f"{status}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.message, self.field, self.request_id = status, message, field, request_id
        self.details = details or []

    @classmethod
    def of(cls, r: httpx.Response) -> NqApiError:
        try:
            err = s.ErrorAnswer.model_validate(r.json())
            e = err.error
            return cls(r.status_code, e.message, e.field, err.request_id, e.details)
        except Exception:  # noqa: BLE001 - not the API's shape (a proxy's page): its text
            return cls(r.status_code, r.text[:300] or r.reason_phrase)


def realtime_body(
    source: str,
    values: float | Sequence[float],
    timestamps: Timestamp | Sequence[Timestamp],
    *,
    neuromorphic: bool = True,
    quantum: bool = True,
    priority: str = "normal",
) -> dict:
    """The body of `POST /api/v1/process/realtime` (see `RealtimeBody`)."""
    many = isinstance(values, (list, tuple))
    body: dict[str, Any] = {"source": source, "data": list(values) if many else [values]}
    if many:
        body["timestamps"] = list(timestamps) if isinstance(timestamps, (list, tuple)) else [timestamps]
    else:
        body["timestamp"] = timestamps
    body["config"] = {"neuromorphic_enabled": neuromorphic, "quantum_enabled": quantum, "priority": priority}
    return body


def _predictions(data: dict) -> s.PredictionRecord | list[s.PredictionRecord]:
    if "predictions" in data and "prediction_id" not in data:
        return s.PredictionList.model_validate(data).predictions
    return s.PredictionRecord.model_validate(data)


class _Api:
    """What the two clients share: the base URL, the key, the retry policy, and each route's request."""

    def __init__(self, base_url: str, key: str | None, backoff: Backoff | None):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.backoff = backoff or Backoff()

    @staticmethod
    def _answer(r: httpx.Response, model: type[M] | None) -> Any:
        if r.status_code >= 400:
            raise NqApiError.of(r)
        return r.json() if model is None else model.model_validate(r.json())

    def _retry(self, attempt: int, r: httpx.Response | None, error: Exception | None) -> float | None:
        """The wait before the next attempt, or None to give up."""
        if attempt >= self.backoff.retries:
            return None
        if error is not None or (r is not None and r.status_code in RETRY_STATUS):
            return self.backoff.delay(attempt, r)
        return None


class Client(_Api):
    """A synchronous client of `nq serve`: `Client("http://127.0.0.1:8080", key="nq_...")`."""

    def __init__(
        self, base_url: str, key: str | None = None, timeout: float = 30.0, backoff: Backoff | None = None
    ):
        super().__init__(base_url, key, backoff)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, model: type[M] | None = None, **kw) -> Any:
        attempt = 0
        while True:
            r, error = None, None
            try:
                r = self.http.request(method, path, **kw)
            except httpx.ConnectError as exc:
                error = exc
            wait = self._retry(attempt, r, error)
            if wait is None:
                if error is not None:
                    raise error
                return self._answer(r, model)
            time.sleep(wait)
            attempt += 1

    # -- predictions
    def predict(
        self, source: str, values, timestamps, **options
    ) -> s.PredictionRecord | list[s.PredictionRecord]:
        """One value (with its timestamp): its record; a list of values (with one timestamp each): a list."""
        data = self.request(
            "POST", "/api/v1/process/realtime", json=realtime_body(source, values, timestamps, **options)
        )
        return _predictions(data)

    def batch(
        self, points: Iterable[dict], job_id: str | None = None, callback_url: str | None = None
    ) -> s.BatchAccepted:
        body: dict[str, Any] = {"data_points": list(points)}
        body.update({k: v for k, v in (("job_id", job_id), ("callback_url", callback_url)) if v})
        return self.request("POST", "/api/v1/process/batch", s.BatchAccepted, json=body)

    def job(self, job_id: str) -> s.Job:
        return self.request("GET", f"/api/v1/jobs/{job_id}", s.Job)

    def wait_job(self, job_id: str, timeout_s: float = 300.0, poll_s: float = 0.2) -> s.Job:
        deadline = time.monotonic() + timeout_s
        while (job := self.job(job_id)).status in ("queued", "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id!r} still {job.status} after {timeout_s} s")
            time.sleep(poll_s)
        return job

    def predictions(self, source: str | None = None, limit: int = 100) -> dict[str, list[s.PredictionRecord]]:
        params = {"limit": limit} | ({"source": source} if source else {})
        return self.request("GET", "/api/v1/predictions", s.PredictionsBySource, params=params).root

    def outcomes(self, source: str | None = None) -> dict[str, list[s.Outcome]]:
        params = {"source": source} if source else {}
        return self.request("GET", "/api/v1/outcomes", s.OutcomesBySource, params=params).root

    # -- the server
    def models(self) -> s.Models:
        return self.request("GET", "/api/v1/models", s.Models)

    def status(self) -> s.Status:
        return self.request("GET", "/api/v1/status", s.Status)

    def metrics(self) -> s.MetricsDocument:
        return self.request("GET", "/api/v1/metrics", s.MetricsDocument)

    def ready(self) -> s.Ready:
        r = self.http.get("/readyz")
        if r.status_code not in (200, 503):
            raise NqApiError.of(r)
        return s.Ready.model_validate(r.json())

    def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.25) -> s.Ready:
        """Until `/readyz` says ready (the server opens its port before its models load)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ready = self.ready()
                if ready.ready:
                    return ready
                why = "; ".join(ready.missing)
            except httpx.TransportError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout_s} s: {why}")
            time.sleep(poll_s)

    def config(self, service: str) -> s.ConfigDocument:
        return self.request("GET", f"/api/v1/config/{service}", s.ConfigDocument)

    def set_config(self, service: str, changes: dict) -> s.ConfigUpdated:
        return self.request("PUT", f"/api/v1/config/{service}", s.ConfigUpdated, json=changes)

    def keys(self) -> list[s.KeyInfo]:
        return self.request("GET", "/api/v1/keys", s.KeyList).keys

    def create_key(
        self, role: str, rate: str = "600/min", burst: int = 50, name: str = "", tenant: str | None = None
    ) -> s.NewKeyAnswer:
        """A new key (shown once); `tenant`: its tenant (the platform's administrator names any, a tenant's
        admin its own)."""
        body = {"role": role, "rate": rate, "burst": burst, "name": name}
        if tenant is not None:
            body["tenant"] = tenant
        return self.request("POST", "/api/v1/keys", s.NewKeyAnswer, json=body)

    def revoke_key(self, key_id: str) -> s.KeyInfo:
        return self.request("DELETE", f"/api/v1/keys/{key_id}", s.KeyInfo)

    def subscribe(self, sources: Sequence[str] | None = None, **kw) -> Iterator[Message]:
        """The WebSocket subscription (`nq_dagster.client.ws`) as an iterator, reconnecting and resuming. Its
        own event loop runs while the next message is awaited (and connects at the first `next()`); a consumer
        slower than the server's ping interval is reconnected and resumed."""
        key = self.headers.get("Authorization", "").removeprefix("Bearer ") or None
        loop = asyncio.new_event_loop()
        client = AsyncClient(self.base_url, key)
        agen = subscribe(client, sources, **kw)
        try:
            while True:
                try:
                    yield loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.run_until_complete(agen.aclose())
            loop.run_until_complete(client.aclose())
            loop.close()


class AsyncClient(_Api):
    """The asynchronous client: the same methods, awaited (`async with AsyncClient(url, key) as c:`)."""

    def __init__(
        self, base_url: str, key: str | None = None, timeout: float = 30.0, backoff: Backoff | None = None
    ):
        super().__init__(base_url, key, backoff)
        self.key = key
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, model: type[M] | None = None, **kw) -> Any:
        attempt = 0
        while True:
            r, error = None, None
            try:
                r = await self.http.request(method, path, **kw)
            except httpx.ConnectError as exc:
                error = exc
            wait = self._retry(attempt, r, error)
            if wait is None:
                if error is not None:
                    raise error
                return self._answer(r, model)
            await asyncio.sleep(wait)
            attempt += 1

    async def predict(self, source: str, values, timestamps, **options):
        body = realtime_body(source, values, timestamps, **options)
        return _predictions(await self.request("POST", "/api/v1/process/realtime", json=body))

    async def batch(self, points: Iterable[dict], job_id: str | None = None) -> s.BatchAccepted:
        body: dict[str, Any] = {"data_points": list(points)} | ({"job_id": job_id} if job_id else {})
        return await self.request("POST", "/api/v1/process/batch", s.BatchAccepted, json=body)

    async def job(self, job_id: str) -> s.Job:
        return await self.request("GET", f"/api/v1/jobs/{job_id}", s.Job)

    async def predictions(
        self, source: str | None = None, limit: int = 100
    ) -> dict[str, list[s.PredictionRecord]]:
        params = {"limit": limit} | ({"source": source} if source else {})
        return (await self.request("GET", "/api/v1/predictions", s.PredictionsBySource, params=params)).root

    async def outcomes(self, source: str | None = None) -> dict[str, list[s.Outcome]]:
        params = {"source": source} if source else {}
        return (await self.request("GET", "/api/v1/outcomes", s.OutcomesBySource, params=params)).root

    async def models(self) -> s.Models:
        return await self.request("GET", "/api/v1/models", s.Models)

    async def status(self) -> s.Status:
        return await self.request("GET", "/api/v1/status", s.Status)

    async def metrics(self) -> s.MetricsDocument:
        return await self.request("GET", "/api/v1/metrics", s.MetricsDocument)

    async def ready(self) -> s.Ready:
        r = await self.http.get("/readyz")
        if r.status_code not in (200, 503):
            raise NqApiError.of(r)
        return s.Ready.model_validate(r.json())

    def subscribe(self, sources: Sequence[str] | None = None, **kw) -> AsyncIterator[Message]:
        """The WebSocket subscription (`nq_dagster.client.ws.subscribe`), reconnecting and resuming."""
        return subscribe(self, sources, **kw)
