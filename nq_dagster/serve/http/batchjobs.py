"""Batch jobs, kept in SQLite in the data directory (`Jobs`: `serve/jobs/r<k>.sqlite`, standard library, one
per replica), or, with `NQ_SERVE_SHARED_STORE` set, in the store the replicas share (`SharedJobs`: any replica
answers for any job, and a job outlives the replica that ran it); never in memory (issue 26 item 9: 1,000 jobs
of 7 MB each were kept in memory, from one key).

Bounded: a job is deleted `ttl_s` after it was submitted, and a key keeps at most `per_key` jobs (a new one
replaces the key's oldest finished job; with all of them still running, the key gets 429). A job is read only
by the key that posted it (or an admin: the route checks). A job a restart interrupted is marked failed, with
the reason and how many of its points were predicted, when the store opens: never `running` for ever. In the
shared store, a job whose replica died (its lease ran out: `serve/shared.py`) is marked failed the same way by
a surviving replica, within the lease; it is not resumed elsewhere: its points are not stored, only its
results, and its sources belong to the dead replica.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nq_dagster.serve.logs import iso
from nq_dagster.serve.shared import JOB_ERRORS_KEPT, SharedStore

JobStatus = Literal["queued", "running", "done", "done_with_errors", "failed"]
ERRORS_KEPT = JOB_ERRORS_KEPT  # messages kept per job; past it, a count

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, points INTEGER NOT NULL, callback_url TEXT,
    status TEXT NOT NULL, submitted_at REAL NOT NULL, finished_at REAL, predicted INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '[]', errors_more INTEGER NOT NULL
    DEFAULT 0, callback TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_id, submitted_at);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (job_id, seq)
);
"""


class QuotaFull(Exception):
    """The key's jobs are all still running: it may post again when one finishes."""


@dataclass
class Job:
    id: str
    points: int
    key_id: str  # the key that posted it: only it (or an admin) may read it
    callback_url: str | None
    status: JobStatus = "queued"
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    predicted: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    errors_more: int = 0  # errors past ERRORS_KEPT, counted
    callback: dict | None = None  # the callback's outcome: {"status_code"} or {"error"}

    def error(self, message: str) -> None:
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(message)
        else:
            self.errors_more += 1

    def public(self, results: list[dict] | None = None) -> dict:
        out = {
            "job_id": self.id,
            "status": self.status,
            "points": self.points,
            "predicted": self.predicted,
            "duplicates": self.duplicates,
            "errors": self.errors + ([f"... and {self.errors_more} more errors"] if self.errors_more else []),
            "submitted_at": iso(self.submitted_at),
            "finished_at": iso(self.finished_at),
            "callback": self.callback,
        }
        if results is not None:
            out["results"] = results
        return out


class Jobs:
    """Jobs of this replica in its SQLite file."""

    def __init__(self, path: str | Path, per_key: int = 20, ttl_s: float = 86_400.0):
        self.path, self.per_key, self.ttl_s = Path(path), per_key, ttl_s
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._interrupted()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _interrupted(self) -> None:
        """Jobs left queued or running by the previous process: failed, saying why."""
        now = time.time()
        for job in self._select("status IN ('queued', 'running')", ()):
            job.error(
                f"interrupted by a server restart before {iso(now)}: {job.predicted} of {job.points} points "
                "were predicted (their records are below); post the others again as a new job"
            )
            job.status, job.finished_at = "failed", now
            self.save(job)

    def _select(self, where: str, args: tuple) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, points, key_id, callback_url, status, submitted_at, finished_at, predicted, "
                f"duplicates, errors, errors_more, callback FROM jobs WHERE {where}",
                args,
            ).fetchall()
        return [
            Job(*r[:9], errors=json.loads(r[9]), errors_more=r[10], callback=json.loads(r[11] or "null"))
            for r in rows
        ]

    def get(self, job_id: str) -> Job | None:
        found = self._select("id = ? AND submitted_at >= ?", (job_id, time.time() - self.ttl_s))
        return found[0] if found else None

    def results(self, job_id: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM results WHERE job_id = ? ORDER BY seq", (job_id,))
            return [json.loads(r[0]) for r in rows.fetchall()]

    def add(self, job: Job) -> None:
        """Store a new job within the TTL and the key's quota (`QuotaFull` when the key's jobs all run)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            expired = time.time() - self.ttl_s
            self._delete("submitted_at < ? OR id = ?", (expired, job.id))
            kept = self._db.execute(
                "SELECT id, status FROM jobs WHERE key_id = ? ORDER BY submitted_at", (job.key_id,)
            ).fetchall()
            finished = [i for i, status in kept if status not in ("queued", "running")]
            surplus = len(kept) + 1 - self.per_key
            if surplus > len(finished):
                raise QuotaFull(
                    f"this key has {len(kept)} batch jobs still running, its quota is {self.per_key}: post "
                    "again when one has finished"
                )
            for old in finished[: max(0, surplus)]:
                self._delete("id = ?", (old,))
            self._db.execute(
                "INSERT INTO jobs (id, key_id, points, callback_url, status, submitted_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.key_id, job.points, job.callback_url, job.status, job.submitted_at),
            )

    def _delete(self, where: str, args: tuple) -> None:
        self._db.execute(f"DELETE FROM results WHERE job_id IN (SELECT id FROM jobs WHERE {where})", args)
        self._db.execute(f"DELETE FROM jobs WHERE {where}", args)

    def save(self, job: Job, results: list[dict] = ()) -> None:
        """The job's status and counts, and its new result records, in one transaction."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if results:
                (base,) = self._db.execute(
                    "SELECT COUNT(*) FROM results WHERE job_id = ?", (job.id,)
                ).fetchone()
                self._db.executemany(
                    "INSERT INTO results (job_id, seq, record) VALUES (?, ?, ?)",
                    [(job.id, base + i, json.dumps(r, allow_nan=False)) for i, r in enumerate(results)],
                )
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, predicted = ?, duplicates = ?, errors = ?, "
                "errors_more = ?, callback = ? WHERE id = ?",
                (
                    job.status,
                    job.finished_at,
                    job.predicted,
                    job.duplicates,
                    json.dumps(job.errors),
                    job.errors_more,
                    json.dumps(job.callback),
                    job.id,
                ),
            )


JOB_COLUMNS = (
    "id, points, key_id, callback_url, status, submitted_at, finished_at, predicted, duplicates, errors, "
    "errors_more, callback"
)


class SharedJobs:
    """Jobs of every replica in the shared store (PostgreSQL); the same methods as `Jobs`. Each job names the
    instance that runs it: only that instance writes it (a save after the job was marked failed for a lapsed
    lease changes nothing), and the others mark it failed when that instance's lease runs out."""

    def __init__(self, store: SharedStore, per_key: int = 20, ttl_s: float = 86_400.0):
        self.store, self.per_key, self.ttl_s = store, per_key, ttl_s
        self.where = f"shared store {store.name}"

    def close(self) -> None:
        """Nothing of its own: the store is closed with the server."""

    def _select(self, where: str, args: tuple) -> list[Job]:
        with self.store.cursor() as cur:
            cur.execute(f"SELECT {JOB_COLUMNS} FROM nq_jobs WHERE {where}", args)
            rows = cur.fetchall()
        return [Job(*r[:9], errors=list(r[9]), errors_more=r[10], callback=r[11]) for r in rows]

    def get(self, job_id: str) -> Job | None:
        found = self._select("id = %s AND submitted_at >= %s", (job_id, time.time() - self.ttl_s))
        return found[0] if found else None

    def results(self, job_id: str) -> list[dict]:
        with self.store.cursor() as cur:
            cur.execute("SELECT record FROM nq_job_results WHERE job_id = %s ORDER BY seq", (job_id,))
            return [json.loads(r[0]) for r in cur.fetchall()]

    def add(self, job: Job) -> None:
        """Store a new job within the TTL and the key's quota across replicas (`QuotaFull` when the key's
        jobs all run); the key's advisory lock makes the count and the insert one step."""
        with self.store.cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('nq_jobs'), hashtext(%s))", (job.key_id,))
                expired = time.time() - self.ttl_s
                self._delete(cur, "submitted_at < %s OR id = %s", (expired, job.id))
                cur.execute(
                    "SELECT id, status FROM nq_jobs WHERE key_id = %s ORDER BY submitted_at", (job.key_id,)
                )
                kept = cur.fetchall()
                finished = [i for i, status in kept if status not in ("queued", "running")]
                surplus = len(kept) + 1 - self.per_key
                if surplus > len(finished):
                    raise QuotaFull(
                        f"this key has {len(kept)} batch jobs still running, its quota is {self.per_key}: "
                        "post again when one has finished"
                    )
                for old in finished[: max(0, surplus)]:
                    self._delete(cur, "id = %s", (old,))
                cur.execute(
                    "INSERT INTO nq_jobs (id, key_id, points, callback_url, status, submitted_at, instance, "
                    "replica) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        job.id,
                        job.key_id,
                        job.points,
                        job.callback_url,
                        job.status,
                        job.submitted_at,
                        self.store.instance,
                        self.store.replica,
                    ),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    @staticmethod
    def _delete(cur, where: str, args: tuple) -> None:
        jobs = f"SELECT id FROM nq_jobs WHERE {where}"
        cur.execute(f"DELETE FROM nq_job_results WHERE job_id IN ({jobs})", args)
        cur.execute(f"DELETE FROM nq_jobs WHERE {where}", args)

    def save(self, job: Job, results: list[dict] = ()) -> None:
        """The job's status and counts, and its new result records, in one transaction; only while this
        instance runs it (a job the others marked failed stays failed, with their reason)."""
        with self.store.cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute(
                    "UPDATE nq_jobs SET status = %s, finished_at = %s, predicted = %s, duplicates = %s, "
                    "errors = %s, errors_more = %s, callback = %s WHERE id = %s AND instance = %s AND "
                    "status IN ('queued', 'running')",
                    (
                        job.status,
                        job.finished_at,
                        job.predicted,
                        job.duplicates,
                        json.dumps(job.errors),
                        job.errors_more,
                        json.dumps(job.callback),
                        job.id,
                        self.store.instance,
                    ),
                )
                if cur.rowcount and results:
                    cur.execute("SELECT count(*) FROM nq_job_results WHERE job_id = %s", (job.id,))
                    (base,) = cur.fetchone()
                    from psycopg2.extras import execute_values  # the store's driver: only with a store

                    execute_values(
                        cur,
                        "INSERT INTO nq_job_results (job_id, seq, record) VALUES %s",
                        [(job.id, base + i, json.dumps(r, allow_nan=False)) for i, r in enumerate(results)],
                    )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
