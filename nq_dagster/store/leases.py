"""Leases of the prediction server's replicas: each running replica rewrites `serve/replicas/r<n>.json` under
the data directory (its address, the sources it owns, a heartbeat) at each round of its watcher; a lease older
than `LEASE_TTL_S` belongs to a replica that is gone. Readers (the streaming asset, the server's forwarding)
find here which live replica serves a source, without importing the server.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nq_dagster.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from nq_dagster.store.warehouse import Warehouse

LEASE_TTL_S = 10.0  # a replica whose lease is older than this is gone


def lease_path(wh: Warehouse, replica: int) -> Path:
    """The lease file of replica `replica` in this data directory."""
    return wh.home / "serve" / "replicas" / f"r{replica}.json"


def write_lease(wh: Warehouse, lease: dict) -> None:
    """Write a replica's lease whole (its `replica` field names the file; `heartbeat` is a Unix time)."""
    atomic_write_bytes(lease_path(wh, int(lease["replica"])), json.dumps(lease).encode())


def replica_leases(wh: Warehouse) -> list[dict]:
    """Live server replicas of this data directory (heartbeat within LEASE_TTL_S)."""
    out = []
    for p in sorted((wh.home / "serve" / "replicas").glob("r*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            lease = json.loads(p.read_text())
            if time.time() - lease.get("heartbeat", 0) < LEASE_TTL_S:
                out.append(lease)
    return out


def serving_replica(wh: Warehouse, source: str) -> dict | None:
    """The live replica that owns `source`, if a server is running for this data directory."""
    return next((lease for lease in replica_leases(wh) if source in lease.get("sources", [])), None)
