"""The `nq` command: demo, run, ingest, query, predict, serve, keys, dev.

Every command works on the data directory `$NQ_HOME` (default `.nq/` under the
working directory, or `--home`). Pipeline runs execute in-process against the
persistent Dagster instance in `$NQ_HOME/dagster`, so they show up in `nq dev`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from nq_dagster.resources.storage import Warehouse, check_source_name

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


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _setup_env(home: str | None) -> Warehouse:
    wh = Warehouse(home).ensure()
    os.environ["NQ_HOME"] = str(wh.home)
    os.environ["DAGSTER_HOME"] = str(wh.dagster_home)
    yaml = wh.dagster_home / "dagster.yaml"
    if not yaml.exists():
        yaml.write_text(INSTANCE_YAML)
    return wh


def _instance():
    """The Dagster instance of $DAGSTER_HOME. Opening it creates its SQLite storage on first use; two `nq`
    processes doing that at once raced on the schema migration ("more than one head"), so it is opened under
    a file lock."""
    import fcntl

    from dagster import DagsterInstance

    lock = Path(os.environ.get("DAGSTER_HOME", ".")) / ".instance.lock"
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            return DagsterInstance.get()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_pipeline(wh: Warehouse, sources: list[str] | None = None, log=print) -> dict[str, bool]:
    """Materialize the per-source graph for `sources` (default: every source with data or landing files),
    then the cross-source assets. Returns success per run."""
    from nq_dagster.definitions import CROSS_SOURCE_JOB, SOURCE_JOB, defs
    from nq_dagster.ingest import landing_files

    if sources is None:
        sources = sorted(set(wh.sources("raw_ticks")) | set(landing_files(wh)))
    instance = _instance()
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
        res = job.execute_in_process(partition_key=src, instance=instance, raise_on_error=False, run_config=QUIET,
                                     tags={"nq/source": src, "nq/trigger": "cli"})
        ok[src] = res.success
        checks = res.get_asset_check_evaluations()
        failed = [c for c in checks if not c.passed]
        ok[src] = res.success and not failed
        log(f"  {src}: {'ok' if ok[src] else 'FAILED'} (run {res.run_id[:8]}; "
            f"{len(checks) - len(failed)}/{len(checks)} data-quality checks passed)")
        for c in failed:
            summary = c.metadata.get("summary")
            log(f"    check {c.asset_key.to_user_string()}:{c.check_name} failed\n"
                + "\n".join("      " + line for line in str(summary.value if summary else "").splitlines()[:8]))
        if not res.success:
            for ev in res.all_events:
                if ev.is_step_failure and ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
                    log(f"    {ev.step_key}: {root_cause(ev.event_specific_data.error)}")
    cross = defs.resolve_job_def(CROSS_SOURCE_JOB) if CROSS_SOURCE_JOB else None
    with_predictions = wh.sources("predictions")
    if cross is not None and any(ok.values()) and len(with_predictions) < 2:
        log(f"  cross-source: skipped (the portfolio needs predictions for at least two sources; have "
            f"{len(with_predictions)})")
    elif cross is not None and any(ok.values()):
        res = cross.execute_in_process(instance=instance, raise_on_error=False, run_config=QUIET)
        ok["_all"] = res.success
        log(f"  cross-source: {'ok' if res.success else 'FAILED'} (run {res.run_id[:8]})")
    return ok


def root_cause(err) -> str:
    """One line for a failed step: the innermost error of Dagster's chain (the user code's exception, not
    "Error occurred while executing op"), its first line."""
    while getattr(err, "cause", None) is not None:
        err = err.cause
    msg = (err.message or "").strip().splitlines()
    return msg[0] if msg else (err.cls_name or "error")


def training_line(wh: Warehouse, source: str) -> tuple[str, bool]:
    """How many rows a source has and what training needs of them: (one line, whether it can train)."""
    from nq_dagster.config import load_config
    from nq_dagster.fusion.walkforward import MIN_ROWS, schedule_for

    rows = sum(wh.part_rows(p) for p in wh.table_parts("raw_ticks", source))
    if rows < MIN_ROWS:
        return (f"{source}: {rows} rows stored; training needs at least {MIN_ROWS}: ingest {MIN_ROWS - rows} more "
                "rows before `nq run`"), False
    s = schedule_for(rows, load_config(wh.home))
    return (f"{source}: {rows} rows stored; training needs at least {MIN_ROWS}: the first model fits on "
            f"{s.train_min} rows, refits every {s.refit_every}, predicts {rows - s.train_min}"), True


def summary_table(wh: Warehouse) -> pd.DataFrame:
    """One row per source: what the warehouse holds and, once validated, how good the predictions are."""
    from nq_dagster.validation.summary import source_summary

    return source_summary(wh)


def _print_frame(df: pd.DataFrame, fmt: str = "table") -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")


def cmd_demo(args) -> int:
    from nq_dagster.demo import write_demo

    wh = _setup_env(args.home)
    paths = write_demo(wh, sources=args.sources, points=args.points, seed=args.seed)
    print(f"wrote {len(paths)} demo sources into {wh.landing}")
    ok = run_pipeline(wh, sources=sorted({p.parent.name for p in paths}))
    print()
    _print_frame(summary_table(wh))
    print(f"\nreports: {wh.reports}")
    print(f"query:   nq query \"SELECT * FROM predictions LIMIT 5\"   (NQ_HOME={wh.home})")
    print(f"serve:   nq keys create --role developer && nq serve   then open http://127.0.0.1:8080/ (the live "
          f"dashboard; paste the key)   (NQ_HOME={wh.home})")
    return 0 if all(ok.values()) else 1


def cmd_run(args) -> int:
    wh = _setup_env(args.home)
    ok = run_pipeline(wh, sources=args.source or None)
    if not ok:
        print("nothing to run: no sources in the warehouse and no files in the landing zone")
        return 1
    _print_frame(summary_table(wh))
    return 0 if all(ok.values()) else 1


def cmd_ingest(args) -> int:
    from nq_dagster.ingest import Ingestor

    rename = {}
    for pair in args.rename:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"--rename {pair!r}: write OLD=NEW, e.g. --rename reading=value")
        rename[old.strip()] = new.strip()
    wh = _setup_env(args.home)
    ing = Ingestor(wh)
    worst = 0
    sources: set[str] = set()
    for f in args.files:
        path = Path(f)
        if not path.is_file():
            print(f"{path}: no such file. Fix: check the path", file=sys.stderr)
            worst = 2
            continue
        r = ing.ingest_file(path, source=args.source, skip_bad_rows=args.skip_bad_rows, rename=rename)
        sources |= set(r.sources)
        if r.status == "quarantined":
            print(f"QUARANTINED {path}: {r.reason}\n  reason file: {wh.quarantine}", file=sys.stderr)
            worst = max(worst, 1)
        else:
            per = ", ".join(f"{s}={n}" for s, n in sorted(r.sources.items())) or "-"
            print(f"{r.status:24s} {path}  rows: {per}  bad rows: {len(r.bad_rows)}")
            for note in r.notes:
                print(f"  note: {note}")
            if r.bad_rows:
                print(f"  bad rows recorded in {wh.quarantine / (path.name + '.reason.txt')}")
    if sources:
        _instance().add_dynamic_partitions("source", sorted(sources - set(_instance().get_dynamic_partitions("source"))))
        for src in sorted(sources):
            print(training_line(wh, src)[0])
        print(f"sources: {', '.join(sorted(sources))}. Next: `nq run` to predict and validate.")
    return worst


def cmd_compact(args) -> int:
    """Merge each source's raw_ticks parts into one, and its live predictions parts (the streaming job's and the
    server's) into one live part (atomic; readers switch at once; see Warehouse.compact)."""
    wh = _setup_env(args.home)
    sources = [check_source_name(args.source)] if args.source else wh.sources("raw_ticks")
    if not sources:
        print("nothing to compact: no source has data")
        return 0
    for s in sources:
        for table in ("raw_ticks", "predictions"):
            if table == "predictions" and not wh.table_parts(table, s):
                continue
            r = wh.compact(table, s, grace_s=args.grace)
            done = f"-> {r['parts_after']} ({r['compacted']})" if r["compacted"] else "(nothing to merge)"
            what = "part(s)" if table == "raw_ticks" else "live part(s)"
            print(f"  {s} {table}: {r['parts_before']} {what} {done}, {r['rows']} rows; "
                  f"{r['removed_files']} replaced file(s) of earlier compactions removed")
    return 0


def cmd_query(args) -> int:
    wh = _setup_env(args.home)
    try:
        df = wh.user_query(args.sql)
    except Exception as exc:  # duckdb errors and refusals carry a readable message
        print(f"query failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    _print_frame(df, args.format)
    return 0


def cmd_predict(args) -> int:
    """One prediction as JSON from the source's saved serving state; no Dagster run, nothing written."""
    import json

    from nq_dagster.fusion.predictor import Predictor
    from nq_dagster.fusion.record import jsonable

    wh = Warehouse(args.home)
    try:
        saved = wh.load_artifact("serving_state", args.source)
    except FileNotFoundError:
        known = wh.artifact_sources("serving_state")
        raise FileNotFoundError(f"no serving state for source {args.source!r} in {wh.where}; sources with one: "
                                f"{', '.join(known) or 'none'}. Fix: run `nq run --source {args.source}` first") from None
    if wh.has_artifact("live_state", args.source):  # the stream went further than training (streaming job, server)
        from nq_dagster.fusion.predictor import continue_from
        from nq_dagster.ingest import build_series, rows_after

        saved, _ = continue_from(saved, wh.load_artifact("live_state", args.source),
                                 rows_after(lambda: build_series(wh.read_table("raw_ticks", args.source))))
    predictor = Predictor()
    predictor.load(saved)
    predictor.warm_up(args.source)  # processing_time_ms is then the per-tick cost, not this process's start-up
    if args.values:
        try:
            values = [float(x) for x in args.values.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"--values: {exc}; pass comma-separated numbers, e.g. --values 1.5,1.7") from None
        records = predictor.advance(args.source, values)
    else:
        records = [predictor.latest(args.source)]
    rows = [jsonable(r) for r in records]
    print(json.dumps(rows if args.all else rows[-1], indent=None if args.compact else 1))
    return 0


def _replica_from_hostname() -> int:
    """A StatefulSet pod's ordinal (`nq-serve-2` -> 2); 0 elsewhere."""
    import re
    import socket

    m = re.search(r"-(\d+)$", os.environ.get("HOSTNAME", socket.gethostname()))
    return int(m.group(1)) if m else 0


def cmd_serve(args) -> int:
    """The prediction server: every trained source's model in memory, under uvicorn."""
    import uvicorn

    from nq_dagster.serve.engine import Ownership
    from nq_dagster.serve.http.app import create_server
    from nq_dagster.serve.logs import configure_logging
    from nq_dagster.serve.server_settings import ServerSettings as Settings  # serve's own

    wh = _setup_env(args.home)
    replicas = args.replicas or int(os.environ.get("NQ_SERVE_REPLICAS", "1"))
    replica = args.replica if args.replica is not None else (
        int(os.environ["NQ_SERVE_REPLICA"]) if "NQ_SERVE_REPLICA" in os.environ else _replica_from_hostname())
    peers = args.peers or os.environ.get("NQ_SERVE_PEERS", "")
    if "{i}" in peers:
        peers = ",".join(peers.replace("{i}", str(i)) for i in range(replicas))
    own = Ownership(replica if replicas > 1 else 0, replicas, tuple(p for p in peers.split(",") if p.strip()))
    configure_logging(args.log_level.upper())
    # one torch thread: the server's parallelism is the batch of requests; torch's intra-op pool on top of the event
    # loop and the engine's worker only contends for the cores (throughput at concurrency 32: 665 -> 910 /s here)
    import torch

    torch.set_num_threads(int(os.environ.get("NQ_SERVE_TORCH_THREADS", "1")))
    address = f"http://{args.host}:{args.port}"
    processes = args.processes or int(os.environ.get("NQ_SERVE_PROCESSES", "1"))
    server = create_server(str(wh.home), own, Settings.load(wh), fsync=args.fsync, address=address,
                           flush_interval_s=args.flush_interval, processes=processes)
    keys = server.keys.list()
    print(f"nq serve: {address} (replica {own.replica} of {own.replicas}); data {wh.home}; sources: "
          f"{', '.join(server.engine.sources()) or 'none trained yet'}", file=sys.stderr)
    if not any(k.revoked_at is None for k in keys):
        print("nq serve: no API key exists yet; every request will get 401. Create one: "
              "nq keys create --role developer", file=sys.stderr)
    uvicorn.run(server.app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                log_config=None, lifespan="on", timeout_graceful_shutdown=30, interface="asgi3")
    return 0


def cmd_keys(args) -> int:
    import json

    from nq_dagster.serve.keys import KeyStore

    wh = Warehouse(args.home).ensure()
    store = KeyStore(wh.home)
    if args.keys_command == "create":
        key, rec = store.create(args.role, args.rate, args.burst, args.max_concurrent, args.name or "")
        print(f"key id {rec.id} (role {rec.role}, rate {args.rate}, burst {rec.burst}). The key, shown once:")
        print(key)
    elif args.keys_command == "list":
        print(json.dumps([k.public() for k in store.list()], indent=1))
    else:
        try:
            rec = store.revoke(args.id)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        print(f"revoked key {rec.id} at {rec.revoked_at}")
    return 0


def dev_command(port: int, host: str) -> tuple[list[str], Path | None]:
    """The command `nq dev` runs, and the directory to run it in: `dg dev` from the project's checkout (its
    pyproject.toml names the code location under [tool.dg]); `dagster dev -m nq_dagster.definitions` where the
    package is installed without its checkout or without dg. Both use the interpreter's own environment."""
    bin_dir = Path(sys.executable).parent
    project = Path(__file__).resolve().parents[1]
    pyproject = project / "pyproject.toml"
    if (bin_dir / "dg").exists() and pyproject.exists() and "[tool.dg]" in pyproject.read_text():
        return [str(bin_dir / "dg"), "dev", "--port", str(port), "--host", host], project
    exe = bin_dir / "dagster"
    return [str(exe) if exe.exists() else "dagster", "dev", "-m", "nq_dagster.definitions", "-p", str(port),
            "-h", host], None


def cmd_dev(args) -> int:
    wh = _setup_env(args.home)
    cmd, cwd = dev_command(args.port, args.host)
    if cwd is not None:
        os.chdir(cwd)
        os.environ["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)  # dg checks it is the project's
    print(f"DAGSTER_HOME={wh.dagster_home}\n$ {' '.join(cmd)}")
    os.execvp(cmd[0], cmd)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nq", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="data directory (default: $NQ_HOME or ./.nq)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="generate the demo sources and run the whole graph")
    d.add_argument("--sources", type=int, default=5)
    d.add_argument("--points", type=int, default=3000)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)
    r = sub.add_parser("run", help="run the graph for landed / stored sources")
    r.add_argument("--source", action="append", help="only this source (repeatable)")
    r.set_defaults(fn=cmd_run)
    i = sub.add_parser("ingest", help="ingest CSV / Parquet / JSON-lines files")
    i.add_argument("files", nargs="+")
    i.add_argument("--source", help="source name for every row (default: the `source` column, else the file name)")
    i.add_argument("--skip-bad-rows", action="store_true", help="store the good rows, record the bad ones")
    i.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="map a column of the file to the source's name for it (repeatable), e.g. reading=value")
    i.set_defaults(fn=cmd_ingest)
    cp = sub.add_parser("compact", help="merge each source's raw_ticks parts into one (atomic)")
    cp.add_argument("--source", help="one source (default: every source)")
    cp.add_argument("--grace", type=float, default=60.0,
                    help="seconds the replaced files stay for queries that listed them (default 60)")
    cp.set_defaults(fn=cmd_compact)
    q = sub.add_parser("query", help="run DuckDB SQL over the warehouse")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(fn=cmd_query)
    pr = sub.add_parser("predict", help="one prediction as JSON from the latest model and saved reservoir state")
    pr.add_argument("--source", required=True)
    pr.add_argument("--values", help="new values after the last one seen, comma-separated; the prediction is "
                    "for the last of them (default: the prediction for the last row already seen)")
    pr.add_argument("--all", action="store_true", help="print a list: one prediction per new value")
    pr.add_argument("--compact", action="store_true", help="one line of JSON")
    pr.set_defaults(fn=cmd_predict)
    sv = sub.add_parser("serve", help="the prediction server (REST, WebSocket, metrics) on the trained models")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--replica", type=int, help="this replica's index (default: NQ_SERVE_REPLICA, else the "
                    "host name's ordinal, nq-serve-2 -> 2)")
    sv.add_argument("--replicas", type=int, help="replica count (default NQ_SERVE_REPLICAS or 1)")
    sv.add_argument("--peers", help="replica base URLs, comma-separated, or a template with {i} (default NQ_SERVE_PEERS)")
    sv.add_argument("--fsync", choices=["interval", "always"], default="interval",
                    help="fsync the tick log every 100 ms (default) or before every reply")
    sv.add_argument("--flush-interval", type=float, default=10.0, help="seconds between writes of the tick log "
                    "into the raw_ticks / predictions tables (the log itself is written before every reply)")
    sv.add_argument("--processes", type=int, help="prediction processes (default NQ_SERVE_PROCESSES or 1): the "
                    "sources are shared out between this process and processes - 1 workers, one core each")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sv.set_defaults(fn=cmd_serve)
    k = sub.add_parser("keys", help="API keys of the prediction server")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    kc.add_argument("--role", required=True, choices=["viewer", "developer", "admin"])
    kc.add_argument("--rate", default="600/min", help="sustained request rate (N/s, N/min, N/h)")
    kc.add_argument("--burst", type=int, default=50, help="requests allowed at once above the rate")
    kc.add_argument("--max-concurrent", type=int, default=32, help="requests of this key in flight at once")
    kc.add_argument("--name", help="a label")
    ksub.add_parser("list", help="list keys (never the keys themselves)")
    kr = ksub.add_parser("revoke", help="revoke a key")
    kr.add_argument("id")
    k.set_defaults(fn=cmd_keys)
    dv = sub.add_parser("dev", help="open the Dagster UI")
    dv.add_argument("--port", type=int, default=3000)
    dv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    dv.set_defaults(fn=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
