"""The landing-zone sensor: new files in `landing/` become one run per source.

Each tick (every 5 s, the sensor daemon's loop; `NQ_SENSOR_INTERVAL`, default 3, is the minimum interval):
- the files waiting in `landing/` are grouped by source (sub-directory, else file stem); a file modified less
  than `NQ_SETTLE_SECONDS` (default 0.25 s) ago is left for the next tick, as it may still be being written
  (writers should write elsewhere and rename into `landing/`, which makes the file appear whole);
- a source that already has a run queued (not yet started) gets nothing new this tick (backpressure: a burst
  of files becomes one run per source, which ingests every file present when it starts); nothing is dropped,
  the files simply wait in `landing/`. While a source's run is executing, the next one is requested and waits
  in the run queue (one run per source at a time: the tag limit on `dagster/partition`), so it starts the
  moment the first ends instead of at the next tick (the sensor daemon ticks every 5 s at the fastest);
- otherwise one run is requested for the source, with `run_key = <job>-<source>-<hash of the files' content
  hashes>-a<attempt>`. Dagster never launches a run key twice, so a file set is processed once however often
  the daemon or the UI restarts; the cursor (kept by Dagster across restarts) only caches content hashes and
  counts attempts. If a run fails and leaves the files in place, the next tick retries with the next attempt
  number, up to `NQ_MAX_ATTEMPTS` (3); then the files go to `quarantine/` with the reason, so the stream
  moves on;
- the job: `streaming` when the source has a serving state (a trained model), else the full training job
  `source_pipeline` once the source has at least `NQ_MIN_ROWS_TO_TRAIN` rows (default: `config.rows_needed`),
  else `ingest_only` (the rows are stored and counted until there are enough).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from nq_dagster.assets.common import ONLY_TAG, SETTINGS, SOURCE_TAG
from nq_dagster.config import load_config, rows_needed
from nq_dagster.ingest import STALE_TEMP_S, SUFFIXES, landing_files
from nq_dagster.jobs import INGEST_JOB, STREAMING_JOB, ingest_only, source_pipeline, streaming
from nq_dagster.jobs import SOURCE_JOB as TRAINING_JOB
from nq_dagster.resources import WarehouseResource
from nq_dagster.settings import Settings
from nq_dagster.store import SOURCE_RE, Warehouse, atomic_write_bytes
from nq_dagster.store.atomic import remove_stale_temp_files

ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
FINISHED_BAD = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


# The sensor's minimum interval (NQ_SENSOR_INTERVAL). Dagster's sensor daemon evaluates sensors at most once
# per 5 s loop; a minimum interval of 5 s itself made every other loop skip the sensor by a few milliseconds
# of jitter (bench/RESULTS.md), so the default is 3 s: a tick every loop.
SENSOR_INTERVAL = SETTINGS.sensor_interval


@dataclass
class Plan:
    requests: list[RunRequest] = field(default_factory=list)
    new_sources: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # source -> why nothing was requested
    quarantined: list[str] = field(default_factory=list)
    cursor: dict = field(default_factory=dict)


def _hash(path: Path, cache: dict) -> str:
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if key not in cache:
        with open(
            path, "rb"
        ) as fh:  # in chunks: a landed file of any size is not held in the daemon's memory
            cache[key] = hashlib.file_digest(fh, "sha256").hexdigest()  # (= content_hash of its bytes)
    return cache[key]


def _landing_rows(path: Path, max_bytes: int) -> int:
    """Rows a landing file holds (lines after the header; Parquet from its footer), to decide on training. A
    file the ingest will refuse counts none: one over NQ_INGEST_MAX_BYTES (not read each tick), a Parquet
    file whose footer does not read (the run quarantines it with the reason; never a failed sensor tick)."""
    if path.stat().st_size > max_bytes:
        return 0
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
            return 0
    with open(path, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(0, lines - (0 if path.suffix.lower() in (".jsonl", ".ndjson") else 1))


def has_current_model(wh: Warehouse, source: str) -> bool:
    """A serving state this version can stream from. One written by an older version (another design matrix)
    or one that cannot be read is retrained by the training job, never streamed into failing runs."""
    if not wh.has_artifact("serving_state", source):
        return False
    import nq_dagster.codecs  # noqa: F401  (registers ServingState with the codec; torch only when needed)
    from nq_dagster.fusion.model import DESIGN_VERSION, ServingState

    try:
        st = wh.load_artifact("serving_state", source)
    except Exception:  # noqa: BLE001 (a damaged artifact: training writes it anew)
        return False
    return isinstance(st, ServingState) and st.model.design == DESIGN_VERSION and st.stream.analog is not None


def _quarantine(wh: Warehouse, files: list[Path], reason: str) -> list[str]:
    moved = []
    wh.quarantine.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not os.path.lexists(f):  # lexists: a link is moved as the link, even a dangling one
            continue
        target = wh.quarantine / f.name
        if os.path.lexists(target):
            target = wh.quarantine / f"{f.stem}.{int(time.time())}{f.suffix}"
        text = f"file: {f}\nreason: {reason}\nnothing of this file was stored; fix it and land it again\n"
        # the reason first: a write that fails (a full disk) leaves the file in landing/, never a file in
        # quarantine/ without its reason
        atomic_write_bytes(target.with_name(target.name + ".reason.txt"), text.encode())
        f.replace(target)
        moved.append(f"{target} ({reason})")
    return moved


IN_PROGRESS_SUFFIXES = {".tmp", ".part", ".partial", ".crdownload", ".swp"}  # a writer's file, not ours yet


def quarantine_unusable(wh: Warehouse, now: float, settle: float) -> list[str]:
    """Files in landing/ that no run could ingest go to quarantine/ at once, each with its reason and fix,
    instead of waiting there unseen: a symbolic link or anything but a regular file (never followed or read:
    a link could point at any file of the machine), an unsupported type, or a source name that is not
    valid."""
    moved = []
    if not wh.landing.exists():
        return moved
    for f in sorted(wh.landing.rglob("*")):
        if f.name.startswith(".") or f.suffix.lower() in IN_PROGRESS_SUFFIXES:
            continue
        st = f.lstat()
        if stat.S_ISDIR(st.st_mode) or now - st.st_mtime < settle:
            continue
        rel = f.relative_to(wh.landing)
        source = rel.parts[0] if len(rel.parts) > 1 else f.stem
        if stat.S_ISLNK(st.st_mode):
            why = (
                "a symbolic link, refused (never followed: it could point at any file of the machine). Fix: "
                "copy or move the file itself into landing/"
            )
        elif not stat.S_ISREG(st.st_mode):
            why = (
                "not a regular file (a FIFO, socket or device). Fix: land CSV, Parquet or JSON-lines files, "
                "written elsewhere and renamed into landing/"
            )
        elif f.suffix.lower() not in SUFFIXES:
            why = (
                f"unsupported file type {f.suffix!r}. Fix: land CSV (.csv), Parquet (.parquet) or JSON lines "
                f"(.jsonl) files"
            )
        elif not SOURCE_RE.match(source):
            why = (
                f"source name {source!r} (from "
                f"{'its directory' if len(rel.parts) > 1 else 'its file name'}) is "
                "not valid. Fix: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, "
                "e.g. landing/<source>/<file>.csv"
            )
        else:
            continue
        moved += _quarantine(wh, [f], why)
    return moved


def dead_local_run(instance, run) -> str | None:
    """Why a STARTED run can never finish, if its worker was a local process that is gone (a daemon killed
    with its process group takes its runs with it); None when alive or unknown. Dagster's run monitoring
    cannot see this for the DefaultRunLauncher (no worker health check), and such a run would hold its
    source's one-run slot for ever. Other launchers (Kubernetes) are left to run monitoring
    (k8s/dagster.yaml)."""
    if run.status != DagsterRunStatus.STARTED or type(instance.run_launcher).__name__ != "DefaultRunLauncher":
        return None
    pid = None
    for rec in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = rec.dagster_event.event_specific_data if rec.dagster_event else None
        meta = getattr(data, "metadata", None) or {}
        if "pid" in meta:
            pid = int(getattr(meta["pid"], "text", meta["pid"]))
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its run worker (pid {pid}) is gone; the run cannot finish"
    except PermissionError:
        return None  # a live process of another user
    return None


def stuck_starting(instance, run, now: float, settings: Settings) -> str | None:
    """Why a run left STARTING can never start: a daemon killed between dequeuing it and launching its worker
    leaves it STARTING for ever (run monitoring is off locally); after `run_start_timeout_s` it is given
    up."""
    if run.status != DagsterRunStatus.STARTING:
        return None
    record = instance.get_run_record_by_id(run.run_id)
    stamp = record.update_timestamp if record else None
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)  # the run storage keeps naive UTC times
    since = stamp.timestamp() if stamp is not None else now
    if now - since < settings.run_start_timeout_s:
        return None
    return (
        f"STARTING for {now - since:.0f} s (its launch died, e.g. a killed daemon); "
        f"given up after NQ_RUN_START_TIMEOUT_S={settings.run_start_timeout_s:g}"
    )


def _files_key(plan: Plan, files: list[Path]) -> str:
    hashes = sorted(plan.cursor["hashes"][f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}"] for f in files)
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]


def _next_request(
    wh: Warehouse,
    instance,
    plan: Plan,
    source: str,
    ready: list[Path],
    need: int,
    max_attempts: int,
    max_bytes: int = 256 * 1024**2,
) -> RunRequest | None:
    """The run for a source's waiting files, or None (quarantined, or still running).

    Isolation: once a run on several files fails, the source's files go one run each (the first waiting file
    alone, `nq/only`) until its landing zone is empty, so a file that makes runs fail is retried and
    quarantined alone and never takes good files with it. Only finished failed runs count towards
    NQ_MAX_ATTEMPTS."""
    if has_current_model(wh, source):
        job = STREAMING_JOB
    elif wh.stored_rows("raw_ticks", source) + sum(_landing_rows(f, max_bytes) for f in ready) >= need:
        job = TRAINING_JOB
    else:
        job = INGEST_JOB
    for _ in range(2):  # a second pass when this tick's look at the last run starts the isolation
        batch = ready[:1] if source in plan.cursor["isolate"] else ready
        files_key = _files_key(plan, batch)
        akey = f"{source}:{files_key}"
        attempt = plan.cursor["attempts"].get(akey, 0)
        previous = instance.get_runs(
            RunsFilter(tags={"dagster/run_key": f"{job}-{source}-{files_key}-a{attempt}"}), limit=1
        )
        if not previous:
            break
        last = previous[0]
        if last.status in ACTIVE:  # that run is still going: nothing is known of these files yet
            plan.waiting[source] = f"run {last.run_id[:8]} on these files is still running"
            return None
        # that exact file set was requested and its run has finished, yet the files are still here
        attempt += 1
        plan.cursor["attempts"][akey] = attempt
        if last.status not in FINISHED_BAD:
            break  # it succeeded without taking them (they landed after it listed landing/): run again
        fails = plan.cursor["failures"].get(akey, 0) + 1
        plan.cursor["failures"][akey] = fails
        if len(batch) > 1:
            plan.cursor["isolate"].append(source)
            continue
        if fails >= max_attempts:
            why = (
                f"{fails} runs failed on this file alone (last run {last.run_id}, status "
                f'{last.status.value}); see `nq query "select * from run_failures"`'
            )
            plan.quarantined += _quarantine(wh, batch, why)
            plan.cursor["attempts"].pop(akey, None)
            plan.cursor["failures"].pop(akey, None)
            return None
        break
    tags = {
        SOURCE_TAG: source,
        "nq/trigger": "landing",
        "nq/files": str(len(batch)),
        "nq/rows_needed": str(need),
    }
    if len(batch) < len(ready):
        tags[ONLY_TAG] = str(batch[0].relative_to(wh.landing))
    return RunRequest(
        run_key=f"{job}-{source}-{files_key}-a{attempt}", job_name=job, partition_key=source, tags=tags
    )


def plan_runs(
    wh: Warehouse,
    instance,
    cursor: dict,
    known_sources: set[str],
    settings: Settings,
    now: float | None = None,
) -> Plan:
    """What one tick requests. Pure apart from reading `landing/`, the run records, and quarantining files
    that cannot be ingested or whose runs failed `NQ_MAX_ATTEMPTS` times."""
    now = time.time() if now is None else now
    settle, max_attempts = settings.settle_seconds, settings.max_attempts
    need = rows_needed(load_config(wh.home), settings.min_rows_to_train)
    old_cache = cursor.get("hashes", {})
    plan = Plan(
        cursor={
            "hashes": {},
            "attempts": dict(cursor.get("attempts", {})),
            "failures": dict(cursor.get("failures", {})),
            "isolate": list(cursor.get("isolate", [])),
        }
    )
    plan.quarantined += quarantine_unusable(wh, now, settle)
    # the temporary file of a quarantine copy or reason file that a killed ingest left (the warehouse's own
    # are removed by the next ingest); a write in progress is younger than STALE_TEMP_S
    remove_stale_temp_files([wh.quarantine], STALE_TEMP_S)
    for source, files in sorted(landing_files(wh).items()):
        ready = [f for f in files if now - f.stat().st_mtime >= settle]
        if not ready:
            plan.waiting[source] = "files still being written"
            continue
        if source not in known_sources:
            plan.new_sources.append(source)
        runs = instance.get_runs(RunsFilter(tags={SOURCE_TAG: source}, statuses=ACTIVE), limit=2)
        # a run that has not started yet will ingest these files too; one already running has (most likely)
        # listed landing/ already, so the next run is queued now and starts the moment it ends
        waiting_run = [r for r in runs if r.status != DagsterRunStatus.STARTED]
        # a run whose worker is gone (STARTED) or that never got one (STARTING past the start timeout) holds
        # the source's one-run slot for ever (a queued run behind it could never start): marked failed
        dead = [
            (r, why)
            for r in runs
            if (why := dead_local_run(instance, r) or stuck_starting(instance, r, now, settings))
        ]
        for f in ready:
            plan.cursor["hashes"][f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}"] = _hash(f, old_cache)
        if dead:
            for r, why in dead:
                instance.report_run_failed(r, why)  # the retry logic below takes it from here
            plan.waiting[source] = f"run {dead[0][0].run_id[:8]} marked failed: {dead[0][1]}"
            continue
        if waiting_run:
            plan.waiting[source] = f"run {waiting_run[0].run_id[:8]} for this source is still queued"
            continue
        request = _next_request(
            wh, instance, plan, source, ready, need, max_attempts, settings.ingest_max_bytes
        )
        if request is not None:
            plan.requests.append(request)
    waiting = set(landing_files(wh))  # forget the counts of file sets no longer waiting
    for name in ("attempts", "failures"):
        plan.cursor[name] = {k: v for k, v in plan.cursor[name].items() if k.split(":", 1)[0] in waiting}
    plan.cursor["isolate"] = sorted(s for s in plan.cursor["isolate"] if s in waiting)
    return plan


@sensor(
    name="landing_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL,
    default_status=DefaultSensorStatus.RUNNING,
    jobs=[streaming, source_pipeline, ingest_only],
    description="New files in landing/: one streaming (or first training) run per source.",
)
def landing_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    settings = warehouse.settings()  # per tick: the daemon's data directory and timings
    wh = warehouse.warehouse(settings)
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions("source"))
    try:
        plan = plan_runs(wh, context.instance, cursor, known, settings)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # quarantining or a temp file's removal met a full disk: one line, the files wait in landing/
        return SkipReason(
            f"no space left on the device of {wh.home} ({exc.strerror}); nothing was moved. Fix: free disk "
            "space; the files in landing/ are picked up at the next tick"
        )
    for q in plan.quarantined:
        context.log.warning(f"quarantined {q}")
    if not plan.requests and not plan.new_sources:
        msg = (
            "; ".join(
                [f"{s}: {why}" for s, why in plan.waiting.items()]
                + [f"quarantined {q}" for q in plan.quarantined]
            )
            or "no new files in landing/"
        )
        context.update_cursor(json.dumps(plan.cursor))
        return SkipReason(msg)
    return SensorResult(
        run_requests=plan.requests,
        dynamic_partitions_requests=[AddDynamicPartitionsRequest("source", plan.new_sources)]
        if plan.new_sources
        else [],
        cursor=json.dumps(plan.cursor),
    )
