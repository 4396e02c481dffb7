"""The `nq` commands that work on the data directory: demo, run, ingest, compact, query, predict, keys. Each
takes the parsed arguments and the process's `Settings`; what needs Dagster or torch is imported inside the
command, so `nq query` and `nq keys` start without them."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse, check_source_name
from nq_dagster.store.views import QueryLimits


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


def cmd_demo(args, settings: Settings) -> int:
    from nq_dagster.demo import write_demo
    from nq_dagster.runner import prepare_home, run_pipeline

    wh = prepare_home(settings)
    paths = write_demo(wh, sources=args.sources, points=args.points, seed=args.seed)
    print(f"wrote {len(paths)} demo sources into {wh.landing}")
    ok = run_pipeline(wh, sources=sorted({p.parent.name for p in paths}), settings=settings)
    print()
    _print_frame(summary_table(wh))
    print(f"\nreports: {wh.reports}")
    print(f'query:   nq query "SELECT * FROM predictions LIMIT 5"   (NQ_HOME={wh.home})')
    print(
        f"serve:   nq keys create --role developer && nq serve   then open http://127.0.0.1:8080/ (the live "
        f"dashboard; paste the key)   (NQ_HOME={wh.home})"
    )
    return 0 if all(ok.values()) else 1


def cmd_run(args, settings: Settings) -> int:
    from nq_dagster.runner import prepare_home, run_pipeline

    wh = prepare_home(settings)
    ok = run_pipeline(wh, sources=args.source or None, settings=settings)
    if not ok:
        print("nothing to run: no sources in the warehouse and no files in the landing zone")
        return 1
    _print_frame(summary_table(wh))
    return 0 if all(ok.values()) else 1


def cmd_ingest(args, settings: Settings) -> int:
    from nq_dagster.ingest import Ingestor
    from nq_dagster.runner import open_instance, prepare_home, training_line

    rename = {}
    for pair in args.rename:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"--rename {pair!r}: write OLD=NEW, e.g. --rename reading=value")
        rename[old.strip()] = new.strip()
    wh = prepare_home(settings)
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
        instance = open_instance(wh)
        instance.add_dynamic_partitions(
            "source", sorted(sources - set(instance.get_dynamic_partitions("source")))
        )
        for src in sorted(sources):
            print(training_line(wh, src)[0])
        print(f"sources: {', '.join(sorted(sources))}. Next: `nq run` to predict and validate.")
    return worst


def cmd_compact(args, settings: Settings) -> int:
    """Merge each source's raw_ticks parts into one, and its live predictions parts (the streaming job's and
    the server's) into one live part (atomic; readers switch at once; see Warehouse.compact)."""
    wh = Warehouse.from_settings(settings).ensure()
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
            print(
                f"  {s} {table}: {r['parts_before']} {what} {done}, {r['rows']} rows; "
                f"{r['removed_files']} replaced file(s) of earlier compactions removed"
            )
    return 0


def cmd_query(args, settings: Settings) -> int:
    wh = Warehouse.from_settings(settings).ensure()
    try:
        df = wh.user_query(
            args.sql,
            QueryLimits(
                timeout_s=settings.query_timeout_s,
                memory_limit=settings.query_memory,
                max_rows=settings.query_max_rows,
            ),
        )
    except Exception as exc:  # duckdb errors and refusals carry a readable message
        print(f"query failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    _print_frame(df, args.format)
    if df.attrs.get("truncated"):
        print(
            f"note: the answer was cut at {settings.query_max_rows} rows (NQ_QUERY_MAX_ROWS); add a LIMIT or "
            "aggregate",
            file=sys.stderr,
        )
    return 0


def cmd_predict(args, settings: Settings) -> int:
    """One prediction as JSON from the source's saved serving state; no Dagster run, nothing written."""
    import json

    from nq_dagster.fusion.predictor import Predictor
    from nq_dagster.fusion.record import jsonable
    from nq_dagster.streams import load_stream

    wh = Warehouse.from_settings(settings)
    try:
        saved, _how = load_stream(
            wh, args.source
        )  # where the stream went (streaming job, server), else training
    except FileNotFoundError:
        known = wh.artifact_sources("serving_state")
        raise FileNotFoundError(
            f"no serving state for source {args.source!r} in {wh.where}; sources with one: "
            f"{', '.join(known) or 'none'}. Fix: run `nq run --source {args.source}` first"
        ) from None
    predictor = Predictor(threads=settings.predict_threads)
    predictor.load(saved)
    predictor.warm_up(
        args.source
    )  # processing_time_ms is then the per-tick cost, not this process's start-up
    if args.values:
        try:
            values = [float(x) for x in args.values.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(
                f"--values: {exc}; pass comma-separated numbers, e.g. --values 1.5,1.7"
            ) from None
        records = predictor.advance(args.source, values)
    else:
        records = [predictor.latest(args.source)]
    rows = [jsonable(r) for r in records]
    print(json.dumps(rows if args.all else rows[-1], indent=None if args.compact else 1))
    return 0


def cmd_keys(args, settings: Settings) -> int:
    import json

    from nq_dagster.serve.keys import KeyStore

    wh = Warehouse.from_settings(settings).ensure()
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


def cmd_models(args, settings: Settings) -> int:
    """Every model version training recorded, per source, with the promotion gate's decision: current (served
    now), promoted (served before), rejected (kept as a candidate, never served), and the figures."""
    import nq_dagster.codecs  # noqa: F401  (the artifacts read here are registered engine types)
    from nq_dagster.validation import promotion

    wh = Warehouse.from_settings(settings).ensure()
    sources = [args.source] if args.source else wh.artifact_sources(promotion.REGISTRY)
    df = promotion.versions_table(wh, sources)
    if not len(df):
        print(f"no model versions recorded in {wh.where}; `nq run` trains and records them", file=sys.stderr)
        return 0
    _print_frame(df, args.format)
    return 0
