"""Which replica serves which source, and the lease files that tell the rest of the system which replicas are
alive and what they serve.

Replica `k` of `n` owns the sources whose stable hash (the first 8 bytes of SHA-256 of the name) modulo `n` is
`k`, so every replica, and every client, computes the same owner without asking anyone. Each replica rewrites
its lease (`store.leases`) every watch interval; the streaming job reads the leases to leave a served source
to its server.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass


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


def replica_lease(own: Ownership, address: str, sources: list[str]) -> dict:
    """This replica's heartbeat (written by `store.leases.write_lease`): who it is, where it answers, the
    sources it serves."""
    return {
        "replica": own.replica,
        "replicas": own.replicas,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "address": address,
        "sources": sources,
        "heartbeat": time.time(),
    }
