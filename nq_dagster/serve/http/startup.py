"""The engine's start in the background: `nq serve` opens its port at once and loads the owned sources' models
(and recovers the tick log) in a thread, so an orchestrator can tell a starting server (`/livez` 200,
`/readyz` 503 naming what is still loading) from a dead one. Requests that need the engine answer 503 with
Retry-After until the start is done (`require_ready`)."""

from __future__ import annotations

import json
import logging
import threading
import time

from nq_dagster.serve.engine import Engine
from nq_dagster.serve.http.errors import ApiError

log = logging.getLogger("nq.serve")

RETRY_WHILE_LOADING_S = 2


class Startup:
    def __init__(self, engine: Engine, started: bool = False):
        """`started`: the engine was started already (nothing to do in the background)."""
        self.engine = engine
        self.done = threading.Event()
        self.error: str | None = None
        self.began = time.monotonic()
        self.seconds: float | None = None
        # listed before the start: what readiness waits for (sources trained later load through the watcher)
        self.owned = [] if started else engine.models.owned_trained_sources()
        self._thread: threading.Thread | None = None
        if started:
            self.seconds = 0.0
            self.done.set()

    def begin(self) -> Startup:
        self._thread = threading.Thread(target=self._run, name="nq-serve-start", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.engine.start()
        except Exception as exc:  # noqa: BLE001 - the server stays up to say so: /livez 503, /readyz names it
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the engine failed to start")
        finally:
            self.seconds = time.monotonic() - self.began
            self.done.set()
            if self.error is None:
                log.info(json.dumps({"event": "engine_started", "seconds": round(self.seconds, 3)}))

    @property
    def ready(self) -> bool:
        return self.done.is_set() and self.error is None

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.done.wait(timeout_s)

    def model_states(self) -> dict[str, str]:
        """Each owned source's model: loaded, loading or failed."""
        loaded, failed = set(self.engine.sources()), set(self.engine.load_errors())
        owned = set(self.owned) | loaded | failed
        if self.done.is_set():  # sources trained since the start: loading until the watcher swaps them in
            owned |= set(self.engine.models.owned_trained_sources())
        return {
            s: "loaded" if s in loaded else ("failed" if s in failed else "loading") for s in sorted(owned)
        }

    def missing(self) -> list[str]:
        """What keeps the engine from serving, each a sentence (empty when ready)."""
        if self.error is not None:
            return [f"the engine failed to start: {self.error}"]
        if self.done.is_set():
            return []
        states = self.model_states()
        loading = [s for s, st in states.items() if st == "loading"]
        out = (
            [f"models loading: {len(loading)} of {len(states)} ({', '.join(loading[:20])})"]
            if loading
            else []
        )
        return out + ["the tick log is being recovered" if not loading else "then the tick log is recovered"]


def require_ready(startup: Startup) -> None:
    """503 with Retry-After while the engine starts (or when it failed to)."""
    if startup.ready:
        return
    if startup.error is not None:
        raise ApiError(503, f"the engine failed to start ({startup.error}); see the server log")
    states = startup.model_states()
    n = sum(1 for st in states.values() if st != "loading")
    raise ApiError(
        503,
        f"the server is still loading its models ({n} of {len(states)} loaded); retry shortly",
        headers={"Retry-After": str(RETRY_WHILE_LOADING_S)},
    )
