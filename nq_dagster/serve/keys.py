"""API keys: stored hashed, with a role, a tenant, a rate limit and a concurrency cap; a token bucket per key.

A key looks like `nq_<id>_<secret>`. Only HMAC-SHA256(server secret, key) is stored (in `serve/keys.json`,
written atomically, so every replica sharing the data directory sees the same keys); the server secret lives
in `serve/secret` (mode 0600, created on first use). Lookup is by the id, comparison in constant time
(`hmac.compare_digest`). The key itself is printed once, at creation, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from nq_dagster.store import atomic_write_bytes
from nq_dagster.store.names import check_tenant_name

ROLES = ("viewer", "developer", "admin")  # each role may do everything the ones before it may
SECONDS_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


RATE_MIN, RATE_MAX = 1.0 / 86_400, 1_000_000.0  # requests per second


def parse_rate(text: str) -> float:
    """'600/min', '10/s', '36000/h' -> requests per second."""
    try:
        n, _, unit = text.partition("/")
        per = SECONDS_PER[unit or "min"]
        value = float(n) / per
    except (KeyError, ValueError):
        raise ValueError(f"rate {text!r}: write it as N/s, N/min or N/h, e.g. 600/min") from None
    # bounded both ways (issue 26): `inf/s` was stored and broke the key list; 1e-300/s made a 301-digit
    # Retry-After. One request a day to a million a second.
    if not RATE_MIN <= value <= RATE_MAX:
        raise ValueError(
            f"rate {text!r}: must be between 1/day and {RATE_MAX:,.0f}/s (a finite number), e.g. 600/min"
        )
    return value


@dataclass
class KeyRecord:
    id: str
    role: str
    hash: str
    rate_per_s: float
    burst: int
    max_concurrent: int
    name: str
    created_at: str
    revoked_at: str | None = None
    # the tenant whose sources this key reaches (store/names.py); None: the default namespace, and with the
    # admin role the platform's administrator, above every tenant
    tenant: str | None = None

    @property
    def platform_admin(self) -> bool:
        return self.tenant is None and self.role == "admin"

    def public(self) -> dict:
        d = asdict(self)
        d.pop("hash")
        d["rate"] = f"{self.rate_per_s * 60:g}/min"
        return d


RELOAD_S = 1.0  # a key revoked by another process is refused within this many seconds (a new key at once)


class KeyStore:
    """Keys of one data directory; re-read when the file changes (a key created or revoked by `nq keys` takes
    effect at the next request, without a restart)."""

    def __init__(self, home: str | Path):
        self.dir = Path(home) / "serve"
        self.path = self.dir / "keys.json"
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._checked = 0.0  # when the file's mtime was last looked at
        self._keys: dict[str, KeyRecord] = {}
        self._secret: bytes | None = None

    def _server_secret(self) -> bytes:
        if self._secret is None:
            p = self.dir / "secret"
            if not p.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(secrets.token_hex(32))
                        fh.flush()
                        os.fsync(fh.fileno())
                except FileExistsError:
                    pass  # another process created it first
            self._secret = bytes.fromhex(p.read_text().strip())
        return self._secret

    def _digest(self, key: str) -> str:
        return hmac.new(self._server_secret(), key.encode(), hashlib.sha256).hexdigest()

    def sign(self, text: str) -> str:
        """HMAC-SHA256 of `text` with the server secret: what only replicas sharing the data directory can
        compute (a request forwarded between them says so with it)."""
        return self._digest(f"sign:{text}")

    def _load(self, fresh: bool = False) -> dict[str, KeyRecord]:
        with self._lock:
            now = time.monotonic()
            if not fresh and self._mtime is not None and now - self._checked < RELOAD_S:
                return self._keys  # a stat per request was 14 % of the server's event loop
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                self._keys, self._mtime = {}, None
                return self._keys
            if mtime != self._mtime:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._keys = {k["id"]: KeyRecord(**k) for k in data["keys"]}
                self._mtime = mtime
            return self._keys

    def _save(self, keys: dict[str, KeyRecord]) -> None:
        blob = json.dumps({"keys": [asdict(k) for k in keys.values()]}, indent=1).encode()
        atomic_write_bytes(self.path, blob)
        os.chmod(self.path, 0o600)

    def create(
        self,
        role: str,
        rate: str = "600/min",
        burst: int = 50,
        max_concurrent: int = 32,
        name: str = "",
        tenant: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key (shown once) and its record; `tenant`: the namespace it reaches (None: the default)."""
        if role not in ROLES:
            raise ValueError(f"role {role!r}: use one of {', '.join(ROLES)}")
        if tenant is not None:
            check_tenant_name(tenant)
        if burst < 1 or max_concurrent < 1:
            raise ValueError("burst and max_concurrent must be at least 1")
        kid = secrets.token_hex(6)
        key = f"nq_{kid}_{secrets.token_urlsafe(24)}"
        rec = KeyRecord(
            id=kid,
            role=role,
            hash=self._digest(key),
            rate_per_s=parse_rate(rate),
            burst=int(burst),
            max_concurrent=int(max_concurrent),
            name=name,
            created_at=datetime.now(UTC).isoformat(),
            tenant=tenant,
        )
        keys = dict(self._load(fresh=True))  # read-modify-write: never from the cache
        keys[kid] = rec
        self._save(keys)
        return key, rec

    def revoke(self, kid: str) -> KeyRecord:
        keys = dict(self._load(fresh=True))  # read-modify-write: never from the cache
        if kid not in keys:
            raise KeyError(f"no key with id {kid!r}")
        keys[kid].revoked_at = keys[kid].revoked_at or datetime.now(UTC).isoformat()
        self._save(keys)
        return keys[kid]

    def list(self) -> list[KeyRecord]:
        return sorted(self._load().values(), key=lambda k: k.created_at)

    def verify(self, key: str) -> KeyRecord | None:
        """The key's record if the key is valid and not revoked, else None (constant-time comparison)."""
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "nq":
            return None
        rec = self._load().get(parts[1]) or self._load(fresh=True).get(parts[1])  # a key created just now
        if rec is None or rec.revoked_at:
            self._digest(key)  # the same work whether or not the id exists
            return None
        return rec if hmac.compare_digest(rec.hash, self._digest(key)) else None


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` returns 0 when allowed, else the seconds until it would
    be."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.t = float(burst), time.monotonic()

    def take(self, cost: float = 1.0) -> float:
        """Take `cost` tokens (a request of n values costs n); the seconds to wait when there are too few."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate
