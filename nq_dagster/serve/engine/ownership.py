"""Which replica serves which source, and the lease files that tell the rest of the system which replicas are
alive and what they serve.

Replica `k` of `n` owns the sources whose stable hash (the first 8 bytes of SHA-256 of the name) modulo `n` is
`k`, so every replica, and every client, computes the same owner without asking anyone. Each replica rewrites
`serve/replicas/r<k>.json` (atomically) every watch interval; a lease older than `LEASE_TTL_S` is a replica
that is gone. The streaming job reads the leases to leave a served source to its server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from nq_dagster.resources.storage import Warehouse, atomic_write_bytes

LEASE_TTL_S = 10.0  # a replica whose lease is older than this is gone


def stable_hash(source: str) -> int:
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Ownership:
    """Replica `replica` of `replicas` serves the sources whose stable hash modulo `replicas` is `replica`.
    `peers[k]` is replica k's base URL (for forwarding); empty when there is one replica."""

    replica: int = 0
    replicas: int = 1
    peers: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.replica < self.replicas:
            raise ValueError(f"replica {self.replica} of {self.replicas}: use 0 <= replica < replicas")
        if self.peers and len(self.peers) != self.replicas:
            raise ValueError(f"{len(self.peers)} peer addresses for {self.replicas} replicas")

    def owner(self, source: str) -> int:
        return stable_hash(source) % self.replicas

    def owns(self, source: str) -> bool:
        return self.owner(source) == self.replica


def lease_path(home: Path, replica: int) -> Path:
    return home / "serve" / "replicas" / f"r{replica}.json"


def write_lease(path: Path, own: Ownership, address: str, sources: list[str]) -> None:
    """This replica's heartbeat: who it is, where it answers, the sources it serves."""
    lease = {"replica": own.replica, "replicas": own.replicas, "pid": os.getpid(),
             "host": socket.gethostname(), "address": address, "sources": sources, "heartbeat": time.time()}
    atomic_write_bytes(path, json.dumps(lease).encode())


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
