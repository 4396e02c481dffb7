"""Batch jobs of this replica: each job's points, status, results and errors, kept in memory (the last
`kept`; a job id posted again is answered from the job it names)."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Literal

from nq_dagster.serve.logs import iso

JobStatus = Literal["queued", "running", "done", "done_with_errors", "failed"]


@dataclass
class Job:
    id: str
    points: int
    key_id: str  # the key that posted it: only it (or an admin) may read it
    callback_url: str | None
    status: JobStatus = "queued"
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    results: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    callback: dict | None = None  # the callback's outcome: {"status_code"} or {"error"}

    def public(self) -> dict:
        return {
            "job_id": self.id,
            "status": self.status,
            "points": self.points,
            "predicted": len(self.results),
            "duplicates": sum(1 for r in self.results if r.get("duplicate")),
            "errors": self.errors,
            "submitted_at": iso(self.submitted_at),
            "finished_at": iso(self.finished_at),
            "callback": self.callback,
            "results": self.results,
        }


class Jobs:
    def __init__(self, kept: int):
        self.kept = kept
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > self.kept:
            self._jobs.popitem(last=False)
