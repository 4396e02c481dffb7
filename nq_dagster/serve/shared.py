"""The store every replica of `nq serve` shares (`NQ_SERVE_SHARED_STORE=postgresql://...`): one rate budget
and one cap on requests in flight per key across replicas (`serve/limits.py`), and the batch jobs, which any
replica answers for and which outlive the replica that ran them (`serve/http/batchjobs.py`).

Each server process is an *instance* (a random id) holding a lease in `nq_replicas`, renewed every `lease_s
/ 5` by a thread of its own; an instance whose lease has run out is dead to the others: its requests in
flight no longer count against their keys' caps, and its unfinished jobs are marked failed with the reason
(by whichever instance sweeps first). So a replica killed with -9 frees its keys' slots within `lease_s` and
never leaves a job `running` for ever.

Fail closed: when the store cannot be reached, the operations raise `StoreUnavailable` (its message names
the store, never its password) and the server answers 503 with Retry-After. Falling back to per-replica
limits would multiply every key's budget by the replica count without anyone noticing, and a job could not
be stored where the other replicas look for it. After a failure, calls fail at once for `RETRY_S` instead of
waiting on the network again (the request path runs on the server's event loop).

psycopg2 (the `shared` extra; dagster-postgres brings it too) is imported only when a store is configured.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("nq.serve")

RETRY_S = 1.0  # after a failure, calls fail at once for this long (no connect attempt per request)
CONNECT_TIMEOUT_S = 2  # psycopg2's connect_timeout (whole seconds)
JOB_ERRORS_KEPT = 100  # error messages kept per batch job; past it, a count (batchjobs.py)
STATEMENT_TIMEOUT_MS = 2000  # a statement held up longer (a lock, a stalled store) fails: 503, not a hang

SCHEMA = """
CREATE TABLE IF NOT EXISTS nq_replicas (
    instance TEXT PRIMARY KEY, replica INTEGER NOT NULL, started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS nq_buckets (
    key_id TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, ts TIMESTAMPTZ NOT NULL,
    taken DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nq_inflight (
    key_id TEXT NOT NULL, instance TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (key_id, instance)
);
CREATE TABLE IF NOT EXISTS nq_jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, points INTEGER NOT NULL, callback_url TEXT,
    status TEXT NOT NULL, submitted_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION,
    predicted INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
    errors JSONB NOT NULL DEFAULT '[]', errors_more INTEGER NOT NULL DEFAULT 0, callback JSONB,
    instance TEXT NOT NULL, replica INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nq_jobs_by_key ON nq_jobs (key_id, submitted_at);
CREATE INDEX IF NOT EXISTS nq_jobs_unfinished ON nq_jobs (instance) WHERE status IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS nq_job_results (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (job_id, seq)
);
"""
SCHEMA_LOCK = 0x6E71_5348  # advisory lock: replicas starting together create the tables one at a time

# Dead instances' slots and unfinished jobs. The jobs' reason is written in SQL so that one statement, run by
# any live instance, settles every job of every dead instance.
SWEEP = """
DELETE FROM nq_inflight WHERE instance NOT IN (SELECT instance FROM nq_replicas WHERE expires_at > now());
UPDATE nq_jobs j SET status = 'failed', finished_at = extract(epoch FROM now()),
    errors = CASE WHEN jsonb_array_length(j.errors) < %(kept)s THEN j.errors || to_jsonb(format(
        'replica %%s stopped answering (its lease in the shared store ran out at %%s): %%s of %%s points '
        'were predicted (their records are below); post the others again as a new job',
        j.replica, coalesce(r.expires_at::text, 'an unknown time'), j.predicted, j.points)) ELSE j.errors END,
    errors_more = j.errors_more + CASE WHEN jsonb_array_length(j.errors) < %(kept)s THEN 0 ELSE 1 END
FROM (SELECT DISTINCT instance FROM nq_jobs WHERE status IN ('queued', 'running')) u
LEFT JOIN nq_replicas r ON r.instance = u.instance
WHERE j.instance = u.instance AND j.status IN ('queued', 'running')
    AND (r.instance IS NULL OR r.expires_at <= now());
DELETE FROM nq_replicas WHERE expires_at < now() - interval '1 day';
"""


class StoreUnavailable(Exception):
    """The shared store could not be reached or refused a statement; the message names the store (no
    password) and the cause. The server answers 503 with Retry-After."""


def redact(url: str) -> str:
    """The store's URL without its password (what messages and logs show)."""
    u = urlsplit(url)
    if u.password is None:
        return url
    host = u.hostname or ""
    netloc = f"{u.username}@{host}" if u.username else host
    if u.port:
        netloc += f":{u.port}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def check_url(url: str) -> str:
    """`url` if it is a PostgreSQL URL, else a ValueError naming the setting and the form it takes."""
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ValueError(
            f"NQ_SERVE_SHARED_STORE={redact(url)!r}: expected postgresql://user:password@host:port/database"
        )
    return url


class _Connection:
    """One psycopg2 connection (autocommit) that reconnects after a failure, failing at once for RETRY_S
    after each failure. Thread-safe: calls are serialized."""

    def __init__(self, store: SharedStore, name: str):
        self.store, self.name = store, name
        self._conn = None
        self._lock = threading.Lock()
        self._failed_at = -1e9
        self._last_error = ""

    @contextlib.contextmanager
    def cursor(self) -> Iterator:
        import psycopg2

        with self._lock:
            if self._conn is None:
                if time.monotonic() - self._failed_at < RETRY_S:
                    raise StoreUnavailable(
                        f"shared store {self.store.name} is unreachable ({self._last_error}); retry shortly"
                    )
                try:
                    self._conn = psycopg2.connect(
                        self.store.url,
                        connect_timeout=CONNECT_TIMEOUT_S,
                        application_name=f"nq-serve r{self.store.replica} {self.name}",
                        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                    )
                    self._conn.autocommit = True  # one statement (or one multi-statement message) = one txn
                except psycopg2.Error as exc:
                    self._fail(exc)
            try:
                with self._conn.cursor() as cur:
                    yield cur
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
                self._fail(exc)
            except psycopg2.Error as exc:  # a statement refused (timeout, lock): the connection stays
                if getattr(exc, "pgcode", None) == "42P01":  # undefined table: a store emptied under us
                    self.store._schema_ready = False  # created again by the next call
                with contextlib.suppress(Exception):
                    with self._conn.cursor() as c:  # an explicit BEGIN the failed statement left open
                        c.execute("ROLLBACK")
                raise StoreUnavailable(f"shared store {self.store.name}: {_first_line(exc)}") from None

    def _fail(self, exc: Exception):
        self._failed_at, self._last_error = time.monotonic(), _first_line(exc)
        raise StoreUnavailable(
            f"shared store {self.store.name} is unreachable ({self._last_error}); retry shortly"
        ) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class SharedStore:
    """This process's handle on the shared store: a connection for the request path, a lease renewed (and
    dead instances swept) by a background thread with a connection of its own."""

    def __init__(self, url: str, replica: int = 0, lease_s: float = 15.0, *, start: bool = True):
        self.url, self.name = check_url(url), redact(url)
        self.replica, self.lease_s = replica, float(lease_s)
        self.instance = f"r{replica}-{secrets.token_hex(6)}"
        self.conn = _Connection(self, "requests")
        self._beat_conn = _Connection(self, "lease")
        self._schema_ready = False
        self._stop = threading.Event()
        self.after_beat: list = []  # callables run by the lease thread after each renewal (pending releases)
        self._thread = threading.Thread(target=self._run, name="nq-shared-lease", daemon=True)
        if start:
            with contextlib.suppress(StoreUnavailable):  # a store down at the start: 503s until it is back
                self.beat()
            self._thread.start()

    def ensure_schema(self, cur) -> None:
        if not self._schema_ready:
            cur.execute(f"BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;")
            self._schema_ready = True

    @contextlib.contextmanager
    def cursor(self) -> Iterator:
        """A cursor on the request path's connection (the tables exist); `StoreUnavailable` when the store
        cannot be reached."""
        with self.conn.cursor() as cur:
            self.ensure_schema(cur)
            yield cur

    def beat(self) -> None:
        """Renew this instance's lease, then settle dead instances' slots and jobs."""
        with self._beat_conn.cursor() as cur:
            self.ensure_schema(cur)
            cur.execute(
                "INSERT INTO nq_replicas (instance, replica, expires_at) VALUES (%s, %s, "
                "now() + make_interval(secs => %s)) ON CONFLICT (instance) DO UPDATE SET expires_at = "
                "EXCLUDED.expires_at",
                (self.instance, self.replica, self.lease_s),
            )
            cur.execute(SWEEP, {"kept": JOB_ERRORS_KEPT})
        for fn in self.after_beat:
            fn(self._beat_conn)

    def _run(self) -> None:
        interval = self.lease_s / 5
        while not self._stop.wait(interval):
            try:
                self.beat()
            except StoreUnavailable as exc:
                log.warning("shared store: lease not renewed: %s", exc)
            except Exception:  # noqa: BLE001 - the lease thread must keep running
                log.exception("shared store: lease renewal failed")

    def close(self) -> None:
        """Stop renewing and end the lease now, so that the others settle this instance's jobs and slots at
        once (a graceful stop) instead of after `lease_s`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(StoreUnavailable), self._beat_conn.cursor() as cur:
            cur.execute("UPDATE nq_replicas SET expires_at = now() WHERE instance = %s", (self.instance,))
            cur.execute(SWEEP, {"kept": JOB_ERRORS_KEPT})
        self.conn.close()
        self._beat_conn.close()
