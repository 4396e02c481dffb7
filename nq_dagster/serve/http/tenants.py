"""Tenants: whose sources a caller reaches (`Scope`), and each tenant's quotas (`Tenants`).

A key (`nq keys create --tenant acme`) or a JWT (its tenant claim) belongs to a tenant; a tenant's source `x`
is stored as `acme~x` (store/names.py) and the tenant sees, posts to, subscribes to and reads it as `x`, and
no other namespace's source by any name (a name with `~` is no valid name in a request). Keys and tokens
without a tenant are the default namespace, today's plain names, exactly as before tenants existed; an admin
key without a tenant is the platform's administrator: it sees every namespace, by the stored names.

Quotas, per tenant, from `<data dir>/serve/tenants.json` (re-read when it changes; docs/server.md):

    {"default": {"sources": 20, "ticks_per_minute": 60000, "concurrent_requests": 64,
                 "stored_rows": 10000000},
     "tenants": {"acme": {"sources": 5, "ticks_per_minute": 600}}}

`default` applies to every tenant the file does not name, a tenant's own entry field by field over it; a quota
left out (or null) is unlimited, and without the file nothing is limited. `ticks_per_minute` and
`concurrent_requests` go through the API keys' limiter (auth.py: a token bucket and an in-flight count keyed
`tenant:<name>`) and answer 429; `sources` and `stored_rows` (the tenant's rows of `raw_ticks`, read from the
parts' footers at most every `USAGE_TTL_S`, plus the ticks this process accepted since) answer 403. Every
refusal names its quota in the error's `quota` field.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.store import SOURCE_RE, STORED_SOURCE_RE, Warehouse
from nq_dagster.store.names import check_tenant_name, split_source, stored_source

log = logging.getLogger("nq.serve")

QUOTA_NAMES = ("sources", "ticks_per_minute", "concurrent_requests", "stored_rows")
USAGE_TTL_S = 5.0  # a tenant's stored rows and sources are read again after this many seconds
RELOAD_S = 1.0  # the tenants file is looked at (its mtime) at most this often


@dataclass(frozen=True)
class Scope:
    """The namespace a caller reaches: `tenant` (None: the default namespace); `platform`: every namespace
    (an admin without a tenant), by the stored names."""

    tenant: str | None = None
    platform: bool = False

    @classmethod
    def of(cls, rec: KeyRecord) -> Scope:
        return cls(rec.tenant, rec.platform_admin)

    @property
    def plain(self) -> bool:
        """The names the caller types are the stored names (the default namespace, the platform)."""
        return self.tenant is None

    def stored(self, name: str, field: str = "source") -> str:
        """The stored name of a source the caller names; 422 for a name it may not type (a `~` name is the
        platform's alone)."""
        if self.platform and STORED_SOURCE_RE.match(name):
            return name
        if not SOURCE_RE.match(name):
            raise ApiError(
                422,
                f"{field}: source name {name!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit",
                field=field,
            )
        return stored_source(self.tenant, name)

    def sees(self, stored: str) -> bool:
        return self.platform or split_source(stored)[0] == self.tenant

    def shown(self, stored: str) -> str:
        """The name the caller knows a stored source by."""
        return stored if self.plain else split_source(stored)[1]

    def visible(self, stored: list[str] | set[str]) -> list[str]:
        return [s for s in stored if self.sees(s)]

    def record(self, rec: dict) -> dict:
        """A record or outcome (each has `source`) as the caller sees it."""
        return rec if self.plain else {**rec, "source": self.shown(rec["source"])}

    def words(self, message: str) -> str:
        """A message about stored sources, worded with the caller's names."""
        return message if self.plain else message.replace(stored_source(self.tenant, ""), "")

    def record_text(self, text: str, stored: str) -> str:
        """A record's JSON text as the engine encoded it, its `source` renamed (no second encoding)."""
        if self.plain:
            return text
        return text.replace(
            f'"source": {json.dumps(stored)}', f'"source": {json.dumps(self.shown(stored))}', 1
        )


DEFAULT_SCOPE = Scope()


@dataclass(frozen=True)
class Quota:
    """One tenant's quotas; None: unlimited."""

    sources: int | None = None
    ticks_per_minute: float | None = None
    concurrent_requests: int | None = None
    stored_rows: int | None = None

    @property
    def rate_per_s(self) -> float:
        return (self.ticks_per_minute or 0.0) / 60.0

    @property
    def burst(self) -> int:
        """The tenant's bucket holds a minute's ticks: a tenant may spend its minute at once."""
        return max(1, int(self.ticks_per_minute or 1))


NO_QUOTA = Quota()


def _quota(entry: object, where: str, base: Quota = NO_QUOTA) -> Quota:
    """An entry of the tenants file over `base`, each field checked; a ValueError names the file's place."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object of quotas ({', '.join(QUOTA_NAMES)})")
    unknown = sorted(set(entry) - set(QUOTA_NAMES))
    if unknown:
        raise ValueError(f"{where}: unknown quota {unknown[0]!r}; the quotas are {', '.join(QUOTA_NAMES)}")
    values = {f.name: getattr(base, f.name) for f in fields(Quota)}
    for name, value in entry.items():
        if value is None:
            values[name] = None
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 1
        if name != "ticks_per_minute":
            ok = ok and float(value).is_integer()
        if not ok or value != value or value == float("inf"):
            raise ValueError(
                f"{where}.{name}: {value!r} is not a positive "
                f"{'number' if name == 'ticks_per_minute' else 'integer'} (or null for no limit)"
            )
        values[name] = float(value) if name == "ticks_per_minute" else int(value)
    return Quota(**values)


def parse_tenants(doc: object, where: str) -> tuple[Quota, dict[str, Quota]]:
    """(the default quota, each named tenant's) of the tenants file's JSON."""
    if not isinstance(doc, dict) or set(doc) - {"default", "tenants"}:
        raise ValueError(f'{where}: expected {{"default": {{...}}, "tenants": {{"<name>": {{...}}}}}}')
    default = _quota(doc.get("default", {}), f"{where}: default")
    named = doc.get("tenants", {})
    if not isinstance(named, dict):
        raise ValueError(f"{where}: tenants: expected an object of tenant name -> quotas")
    out = {}
    for name, entry in named.items():
        try:
            check_tenant_name(name)
        except ValueError as exc:
            raise ValueError(f"{where}: tenants: {exc}") from None
        out[name] = _quota(entry, f"{where}: tenants.{name}", default)
    return default, out


class Tenants:
    """The tenants file of a data directory (re-read when it changes) and each tenant's usage."""

    def __init__(self, wh: Warehouse):
        self.wh = wh
        self.path = Path(wh.home) / "serve" / "tenants.json"
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._checked = 0.0
        self._default, self._named = NO_QUOTA, {}
        self._usage: dict[str, tuple[float, set[str], int]] = {}  # tenant -> (when read, sources, rows)
        self._accepted: dict[str, int] = {}  # ticks accepted since the usage was read
        self._load(strict=True)

    def _load(self, strict: bool = False) -> None:
        """Read the file when it changed. At the start a bad file stops the server (naming what is wrong);
        later it is logged and the last good quotas stay (a half-edited file does not lift every quota)."""
        now = time.monotonic()
        if not strict and now - self._checked < RELOAD_S:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                self._mtime, self._default, self._named = None, NO_QUOTA, {}
                return
            if mtime == self._mtime:
                return
            try:
                self._default, self._named = parse_tenants(
                    json.loads(self.path.read_text(encoding="utf-8")), str(self.path)
                )
            except (ValueError, OSError) as exc:
                if strict:
                    raise ValueError(f"{exc}; fix the file (docs/server.md, Tenants)") from None
                log.error(
                    json.dumps({"event": "tenants_file_refused", "file": str(self.path), "error": str(exc)})
                )
            self._mtime = mtime

    def quota(self, tenant: str | None) -> Quota:
        if tenant is None:
            return NO_QUOTA
        self._load()
        return self._named.get(tenant, self._default)

    # -- usage: sources and stored rows -------------------------------------------------------------------
    def _read_usage(self, tenant: str) -> tuple[set[str], int]:
        prefix = stored_source(tenant, "")
        sources = {s for s in self.wh.sources("raw_ticks") if s.startswith(prefix)}
        return sources, sum(self.wh.stored_rows("raw_ticks", s) for s in sources)

    def usage(self, tenant: str) -> tuple[set[str], int]:
        """(the tenant's stored sources, its stored rows): blocking I/O when older than USAGE_TTL_S."""
        known = self._usage.get(tenant)
        if known is None or time.monotonic() - known[0] > USAGE_TTL_S:
            sources, rows = self._read_usage(tenant)
            known = self._usage[tenant] = (time.monotonic(), sources, rows)
            self._accepted[tenant] = 0
        return known[1], known[2] + self._accepted.get(tenant, 0)

    def fresh(self, tenant: str) -> bool:
        known = self._usage.get(tenant)
        return known is not None and time.monotonic() - known[0] <= USAGE_TTL_S

    def forget(self, tenant: str | None) -> None:
        """Read the tenant's usage anew at its next check (after an upload stored rows)."""
        self._usage.pop(tenant or "", None)

    def accepted(self, tenant: str, ticks: int) -> None:
        self._accepted[tenant] = self._accepted.get(tenant, 0) + ticks

    def check_store(self, tenant: str | None, source: str | None = None, rows: int = 0) -> None:
        """403 when the tenant's stored rows reached its quota, or when `source` (stored name) is a new source
        past its quota of sources. Blocking when the usage is stale (call it in a thread then)."""
        q = self.quota(tenant)
        if tenant is None or (q.stored_rows is None and q.sources is None):
            return
        sources, stored = self.usage(tenant)
        if q.stored_rows is not None and stored + max(rows, 1) > q.stored_rows:
            raise ApiError(
                403,
                f"tenant {tenant!r} stores {stored:,} rows and its quota `stored_rows` is {q.stored_rows:,}"
                + (f" (this request adds {rows:,})" if rows else "")
                + ": ask the platform's administrator for a larger quota, or delete old data",
                quota="stored_rows",
            )
        if (
            q.sources is not None
            and source is not None
            and source not in sources
            and len(sources) >= q.sources
        ):
            raise ApiError(
                403,
                f"tenant {tenant!r} has {len(sources)} sources and its quota `sources` is {q.sources}: a new "
                f"source {split_source(source)[1]!r} needs a larger quota (ask the platform's administrator)",
                quota="sources",
            )
