"""Runs of the Dagster graph in this process, for the `nq` commands: the instance of a data directory (its
`dagster.yaml` written on first use), the run configuration that points the resources at that directory, and
the one line per source on what training needs. It assembles the code location, so it sits beside
`definitions.py`, above the Dagster layer; `nq query` and the engines never import it."""

from __future__ import annotations

import fcntl

from dagster import DagsterInstance

from nq_dagster.config import load_config, rows_needed
from nq_dagster.definitions import CROSS_SOURCE_JOB, FRESHNESS_JOB, SOURCE_JOB, defs
from nq_dagster.fusion.walkforward import schedule_for
from nq_dagster.ingest import landing_files
from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse
from nq_dagster.store.names import FIRST_STEP, unknown_name

INSTANCE_YAML = """\
# Dagster instance for nq-dagster (written by `nq`; edit freely, it is not overwritten).
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1    # how soon a queued run starts (the landing sensor's interval adds to it)
concurrency:
  runs:
    max_concurrent_runs: 4         # a burst of files never becomes more than 4 runs at a time
    tag_concurrency_limits:
      - key: "dagster/partition"   # one run per source at a time, however launched (UI, sensor, schedule):
        value:                     # streaming and training never overlap
          applyLimitPerUniqueValue: true
        limit: 1
      - key: "nq/source"           # the same for runs that name their source without a partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
telemetry:
  enabled: false
"""


def prepare_home(settings: Settings | str) -> Warehouse:
    """The data directory of `settings` (or a path, with the environment's other settings), created, with the
    Dagster instance configuration `nq` runs under."""
    if not isinstance(settings, Settings):
        settings = Settings.from_env().with_home(settings)
    wh = Warehouse.from_settings(settings).ensure()
    yaml = wh.dagster_home / "dagster.yaml"  # the CLI's instance lives in the data directory it works on
    if not yaml.exists():
        yaml.write_text(INSTANCE_YAML)
    return wh


def open_instance(wh: Warehouse) -> DagsterInstance:
    """The Dagster instance of the data directory. Opening it creates its SQLite storage on first use; two
    `nq` processes doing that at once raced on the schema migration ("more than one head"), so it is opened
    under a file lock."""
    home = wh.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".instance.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            return DagsterInstance.from_config(str(home))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_config_for(wh: Warehouse, settings: Settings | None = None) -> dict:
    """Quiet console logs, and the warehouse resource pointed at this data directory and the backend of
    `settings` (the command's; by default the environment's): the run records them, so the UI shows where a
    CLI run read and wrote, and a code location loaded earlier with other settings cannot redirect the run."""
    s = settings or Settings.from_env()
    return {
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        "resources": {
            "warehouse": {
                "config": {
                    "home": str(wh.home),
                    "s3_bucket": s.s3_bucket,
                    "s3_prefix": s.s3_prefix,
                    "s3_endpoint": s.s3_endpoint,
                }
            }
        },
    }


def run_pipeline(
    wh: Warehouse,
    sources: list[str] | None = None,
    log=print,
    settings: Settings | None = None,
    progress=None,
) -> dict[str, bool]:
    """Materialize the per-source graph for `sources` (default: every source with data or landing files),
    then the cross-source assets, in this process against the instance of `wh`'s data directory. Returns
    success per run. `progress`: a stream (stderr) to draw each run's progress on (`nq_dagster.progress`),
    or None for none."""
    present = sorted(set(wh.sources("raw_ticks")) | set(landing_files(wh)))
    if sources is None:
        sources = present
    else:  # a typo must create nothing: a Dagster partition added for it stayed for ever (issue 28)
        for src in sources:
            if src not in present:
                raise ValueError(
                    unknown_name(
                        "source",
                        src,
                        present,
                        f"`nq ingest FILE --source {src}` to create it" if present else FIRST_STEP,
                    )
                )
    if not sources:
        return {}
    instance = open_instance(wh)
    run_config = run_config_for(wh, settings)
    known = set(instance.get_dynamic_partitions("source"))
    new = [s for s in sources if s not in known]
    if new:
        instance.add_dynamic_partitions("source", new)
    job = defs.resolve_job_def(SOURCE_JOB)
    ok: dict[str, bool] = {}
    waiting = set(landing_files(wh))
    for src in sources:
        if src not in waiting:  # rows known now: say at once whether they are enough, and how training goes
            line, enough = training_line(wh, src)
            log(f"  {line}")
            if not enough:
                ok[src] = False
                continue
        res = _execute(job, instance, run_config, src, wh, progress)
        checks = res.get_asset_check_evaluations()
        failed = [c for c in checks if not c.passed]
        ok[src] = res.success and not failed
        log(
            f"  {src}: {'ok' if ok[src] else 'FAILED'} (run {res.run_id[:8]}; "
            f"{len(checks) - len(failed)}/{len(checks)} data-quality checks passed)"
        )
        for c in failed:
            summary = c.metadata.get("summary")
            log(
                f"    check {c.asset_key.to_user_string()}:{c.check_name} failed\n"
                + "\n".join(
                    "      " + line for line in str(summary.value if summary else "").splitlines()[:8]
                )
            )
        if not res.success:
            for ev in res.all_events:
                if (
                    ev.is_step_failure
                    and ev.event_specific_data is not None
                    and getattr(ev.event_specific_data, "error", None)
                ):
                    log(f"    {ev.step_key}: {root_cause(ev.event_specific_data.error)}")
    cross = defs.resolve_job_def(CROSS_SOURCE_JOB) if CROSS_SOURCE_JOB else None
    with_predictions = wh.sources("predictions")
    if cross is not None and any(ok.values()) and len(with_predictions) < 2:
        log(
            f"  cross-source: skipped (the portfolio needs predictions for at least two sources; have "
            f"{len(with_predictions)})"
        )
    elif cross is not None and any(ok.values()):
        res = cross.execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config, tags={"nq/trigger": "cli"}
        )
        ok["_all"] = res.success
        log(f"  cross-source: {'ok' if res.success else 'FAILED'} (run {res.run_id[:8]})")
    if any(ok.values()):
        freshness_line(instance, run_config, log)
    return ok


def freshness_line(instance, run_config: dict, log) -> None:
    """Evaluate `predictions_fresh` once after the training runs and say its result in one line. Training runs
    do not run it (it covers every source; a stale source would fail another's training run), so without this
    run the check had no evaluation until the first streaming run: the Dagster overview showed it "Not
    evaluated" after `nq demo` (issue 28). A stale source is a warning here: the command's exit status is
    its training's."""
    res = defs.resolve_job_def(FRESHNESS_JOB).execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config, tags={"nq/trigger": "cli"}
    )
    checks = res.get_asset_check_evaluations()
    if not res.success or not checks:
        log(f"  freshness: the check did not run (run {res.run_id[:8]})")
        return
    c = checks[0]
    stale = c.metadata["stale_sources"].value
    modelled = c.metadata["sources_with_a_model"].value
    if c.passed:
        log(f"  freshness: ok, no source with a model is stale ({modelled} checked; run {res.run_id[:8]})")
    else:
        summary = str(c.metadata["summary"].value).split("\n\n")[0]
        log(f"  freshness: WARNING {stale} of {modelled} source(s) stale (run {res.run_id[:8]}): {summary}")


def _execute(job, instance, run_config: dict, source: str, wh: Warehouse, progress):
    """One run of `job` for `source`, its progress drawn on `progress` (a stream) from the run's events; the
    rows it ran on are tagged afterwards, the scale of the next run's estimate."""
    import uuid

    from nq_dagster.progress import ROWS_TAG, RunProgress, step_history

    run_id = str(uuid.uuid4())
    bar = None
    if progress is not None:
        bar = RunProgress(
            label=source,
            steps=[n.name for n in job.graph.nodes],
            rows=wh.stored_rows("raw_ticks", source),
            history=step_history(instance, job.name),
            out=progress,
        )
        instance.add_event_listener(run_id, bar.on_event)
    try:
        res = job.execute_in_process(
            partition_key=source,
            instance=instance,
            raise_on_error=False,
            run_config=run_config,
            run_id=run_id,
            tags={"nq/source": source, "nq/trigger": "cli"},
        )
    finally:
        if bar is not None:
            bar.close()
    instance.add_run_tags(run_id, {ROWS_TAG: str(wh.stored_rows("raw_ticks", source))})
    return res


def root_cause(err) -> str:
    """One line for a failed step: the innermost error of Dagster's chain (the user code's exception, not
    "Error occurred while executing op"), its first line."""
    while getattr(err, "cause", None) is not None:
        err = err.cause
    msg = (err.message or "").strip().splitlines()
    return msg[0] if msg else (err.cls_name or "error")


def training_line(wh: Warehouse, source: str) -> tuple[str, bool]:
    """How many rows a source has and what training needs of them: (one line, whether it can train)."""
    cfg = load_config(wh.home)
    need = rows_needed(cfg)
    rows = wh.stored_rows("raw_ticks", source)
    if rows < need:
        return (
            f"{source}: {rows} rows stored; training needs at least {need}: ingest {need - rows} more "
            "rows before `nq run`"
        ), False
    s = schedule_for(rows, cfg)
    return (
        f"{source}: {rows} rows stored; training needs at least {need}: the first model fits on "
        f"{s.train_min} rows, refits every {s.refit_every}, predicts {rows - s.train_min}"
    ), True
