"""Which replica serves which source, and the lease files that tell the rest of the system which replicas are
alive and what they serve.

Two modes. Fixed (plain HTTP deployments): replica `k` of `n` owns the sources whose stable hash (the first 8
bytes of SHA-256 of the name) modulo `n` is `k`, so every replica, and every client, computes the same owner
without asking anyone; peers are listed by hand. Leased (`nq serve --stream`): sources fall in `partitions`
partitions (FNV-1a of the name modulo P, the broker's own `partition()` subject mapping, so the broker files
each tick under its partition), and a replica owns the partitions whose lease it holds in the broker's
key-value bucket (serve/stream/leases.py); the lease table says who owns the others. Each replica rewrites its
lease file (`store.leases`) every watch interval; the streaming job reads those files to leave a served source
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


def partition_of(source: str, partitions: int) -> int:
    """The stream partition of `source`: FNV-1a (32 bits) of its name modulo `partitions`, which is what the
    NATS server's `{{partition(P,1)}}` subject mapping computes, so the server and the broker agree on it (a
    test checks them against each other)."""
    h = 0x811C9DC5
    for b in source.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


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


class LeasedOwnership:
    """Ownership by partition leases (`nq serve --stream`): `held` is the set of partitions this replica holds
    a valid lease on, `table` every partition's holder as last read from the bucket ({partition: (replica,
    address)}). Both are replaced whole by the lease loop (serve/stream/leases.py) and read from any thread.
    `owner(source)` is None while the source's partition has no holder (a takeover in progress)."""

    def __init__(self, replica: int, partitions: int):
        if replica < 0:
            raise ValueError(f"replica {replica}: use a replica number >= 0")
        if partitions < 1:
            raise ValueError(f"{partitions} partitions: use at least 1")
        self.replica, self.partitions = replica, partitions
        self.held: frozenset[int] = frozenset()
        self.table: dict[int, tuple[int, str]] = {}

    def partition(self, source: str) -> int:
        return partition_of(source, self.partitions)

    def owns(self, source: str) -> bool:
        return self.partition(source) in self.held

    def owner(self, source: str) -> int | None:
        if self.owns(source):
            return self.replica
        holder = self.table.get(self.partition(source))
        return holder[0] if holder else None

    @property
    def replicas(self) -> int:
        """Replicas holding at least one partition now."""
        return len({r for r, _ in self.table.values()} | ({self.replica} if self.held else set()))

    @property
    def peers(self) -> dict[int, str]:
        """{replica: base URL} of the replicas holding partitions (for forwarding)."""
        return {r: a for r, a in self.table.values() if a}


def replica_lease(own: Ownership | LeasedOwnership, address: str, sources: list[str]) -> dict:
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
