"""A Python client of the prediction server (`nq serve`): sync `Client` and async `AsyncClient`, answers typed
with the models the server's OpenAPI document publishes (`nq_dagster.serve.http.schemas`), retries on 429/503
honouring Retry-After, and the WebSocket subscription with reconnection and resumption.

    from nq_dagster.client import Client

    with Client("http://127.0.0.1:8080", key="nq_...") as nq:
        nq.wait_ready()
        rec = nq.predict("market_A", 101.25, "2026-12-02T15:20:00Z")
        print(rec.direction, rec.confidence)
        for msg in nq.subscribe(["market_A"]):
            print(msg.prediction.direction if msg.type == "prediction" else msg.outcome.correct)

Light: httpx, websockets and pydantic only (no torch, no Dagster).
"""

from nq_dagster.client.http import AsyncClient, Client, NqApiError
from nq_dagster.client.retry import Backoff
from nq_dagster.client.ws import SubscriptionRefused, subscribe

__all__ = ["AsyncClient", "Backoff", "Client", "NqApiError", "SubscriptionRefused", "subscribe"]
