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


def compact_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The summary in a few columns that fit 100 characters (a terminal's width): the figures a person reads
    first; `--wide` and `--format json` print every column."""
    if df.empty:
        return df
    out = pd.DataFrame({"source": df["source"].astype(str).str.slice(0, 20), "rows": df["points"]})
    if "accuracy" not in df:
        return out.assign(verdict="not validated")
    out["predicted"] = df["predictions"].astype("Int64")
    out["accuracy (95% CI)"] = [
        "-" if pd.isna(a) else f"{a:.3f} ({lo:.2f}-{hi:.2f})"
        for a, lo, hi in zip(df["accuracy"], df["acc_ci_low"], df["acc_ci_high"], strict=True)
    ]
    out["best baseline"] = [
        "-" if pd.isna(b) else f"{str(b)[:12]} {acc:.3f}"
        for b, acc in zip(df["best_baseline"], df["best_baseline_acc"], strict=True)
    ]
    out["ECE"] = df["ece"].round(3)
    out["verdict"] = [
        "not validated" if pd.isna(sc) else "skill" if sk is True else "no skill"
        for sc, sk in zip(df["score"], df["skill"], strict=True)
    ]
    out["score"] = [None if pd.isna(sc) else round(float(sc), 1) for sc in df["score"]]  # of 100
    return out


def print_summary(wh: Warehouse, args) -> None:
    """The per-source summary: compact by default, every column with `--wide` or `--format json|csv`."""
    df = summary_table(wh)
    fmt = getattr(args, "format", "table")
    if fmt != "table" or getattr(args, "wide", False):
        _print_frame(df, fmt)
    else:
        _print_frame(compact_summary(df))
        if len(df):
            print("(every column: --wide, or --format json)")


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
    ok = run_pipeline(
        wh, sources=sorted({p.parent.name for p in paths}), settings=settings, progress=sys.stderr
    )
    print()
    print_summary(wh, args)
    # each line within 100 columns (a terminal's width; the summary above fits it too)
    print(f"\nreports: {wh.reports}")
    print('query:   nq query "SELECT * FROM predictions LIMIT 5"')
    print("serve:   nq keys create --role developer && nq serve")
    print("         then open http://127.0.0.1:8080/ (the live dashboard; paste the key)")
    print(f"(these commands need NQ_HOME={wh.home}, or --home, unless it is ./.nq)")
    return 0 if all(ok.values()) else 1


def cmd_run(args, settings: Settings) -> int:
    from nq_dagster.runner import prepare_home, run_pipeline

    wh = prepare_home(settings)
    ok = run_pipeline(wh, sources=args.source or None, settings=settings, progress=sys.stderr)
    if not ok:
        from nq_dagster.store.names import FIRST_STEP

        print(
            f"nothing to run in {wh.home}: no source has rows and no file waits in landing/. "
            f"Next: {FIRST_STEP}",
            file=sys.stderr,
        )
        return 1
    print_summary(wh, args)
    return 0 if all(ok.values()) else 1


def _ingest_options(args):
    """`nq ingest`'s reading options, each checked before a file is read (ValueError: one line, exit 2)."""
    import zoneinfo

    from nq_dagster.ingest import ReadOptions

    delimiter = {"\\t": "\t", "tab": "\t"}.get(args.delimiter, args.delimiter)
    if len(delimiter) != 1 or delimiter in '\r\n"':
        raise ValueError(f"--delimiter {args.delimiter!r}: one character, e.g. ';' or '\\t' (tab)")
    fmt = args.timestamp_format
    if fmt is not None and "%" not in fmt:
        raise ValueError(
            f"--timestamp-format {fmt!r}: a strftime format, e.g. '%Y/%m/%d %H:%M' or '%b %d %Y'"
        )
    tz = args.timezone
    if tz is not None:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"--timezone {tz!r}: not an IANA time zone; e.g. UTC, Europe/Paris, America/New_York"
            ) from None
    return ReadOptions(delimiter, fmt, tz, args.value_column)


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot be ingested before it is opened (a FIFO would block the reader for ever), or None."""
    import stat

    try:
        st = path.stat()  # (a link the user names is followed: it is their file)
    except FileNotFoundError:
        return f"{path}: no such file. Fix: check the path"
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror}). Fix: check the path and its permissions"
    if stat.S_ISDIR(st.st_mode):
        return f"{path}: a directory, not a file. Fix: name the files in it, e.g. `nq ingest {path}/*.csv`"
    if not stat.S_ISREG(st.st_mode):
        return (
            f"{path}: not a regular file (a FIFO, socket or device). Fix: write the data to a CSV, Parquet "
            "or JSON-lines file and ingest that"
        )
    return None


def cmd_ingest(args, settings: Settings) -> int:
    from nq_dagster.ingest import IngestFailed, IngestLimits, Ingestor
    from nq_dagster.runner import open_instance, prepare_home, training_line

    rename = {}
    for pair in args.rename:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"--rename {pair!r}: write OLD=NEW, e.g. --rename reading=value")
        rename[old.strip()] = new.strip()
    options = _ingest_options(args)
    wh = prepare_home(settings)
    ing = Ingestor(wh, IngestLimits.from_settings(settings))
    worst = 0
    sources: set[str] = set()
    for f in args.files:
        path = Path(f)
        why = _not_a_file(path)
        if why:
            print(why, file=sys.stderr)
            worst = 2
            continue
        try:
            r = ing.ingest_file(
                path, source=args.source, skip_bad_rows=args.skip_bad_rows, rename=rename, options=options
            )
        except IngestFailed as exc:  # a held lock, a full disk: the file is untouched, try again later
            print(f"error: {exc}", file=sys.stderr)
            worst = max(worst, 1)
            continue
        sources |= set(r.sources)
        if r.status == "quarantined":
            where = r.reason_file or wh.quarantine
            print(f"QUARANTINED {path}: {r.reason}\n  reason file: {where}", file=sys.stderr)
            worst = max(worst, 1)
        else:
            per = ", ".join(f"{s}={n}" for s, n in sorted(r.sources.items())) or "-"
            print(f"{r.status:24s} {path}  rows: {per}  bad rows: {r.bad_count}")
            for note in r.notes:
                print(f"  note: {note}")
            if r.bad_rows:
                print(f"  bad rows recorded in {r.reason_file}")
    if sources:
        instance = open_instance(wh)
        instance.add_dynamic_partitions(
            "source", sorted(sources - set(instance.get_dynamic_partitions("source")))
        )
        ready = []
        for src in sorted(sources):
            # one part per file until merged, as the daemon's ingest does (NQ_COMPACT_PARTS)
            compacted = wh.compact_if_many("raw_ticks", src)
            if compacted:
                print(f"  compacted {src}: {compacted['parts_before']} parts -> {compacted['parts_after']}")
            line, can_train = training_line(wh, src)
            print(line)
            if can_train:
                ready.append(src)
        if ready:
            print(f"sources: {', '.join(ready)}. Next: `nq run` to predict and validate.")
        else:
            print("Next: ingest more rows; `nq run` trains a source once it has the rows named above.")
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
        raise FileNotFoundError(_no_model_message(wh, args.source)) from None
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


def _no_model_message(wh: Warehouse, source: str) -> str:
    """Why `nq predict --source S` has no model, and the next step that can work: a typo gets the nearest
    names (never `nq run --source typo`), a source with too few rows the rows it still needs."""
    from nq_dagster.config import load_config, rows_needed
    from nq_dagster.store.names import FIRST_STEP, unknown_name

    stored = set(wh.sources("raw_ticks"))
    if source in stored:
        need, rows = rows_needed(load_config(wh.home)), wh.stored_rows("raw_ticks", source)
        if rows < need:
            return (
                f"source {source!r} has no model yet: {rows} rows stored, training needs {need}. "
                f"Fix: ingest {need - rows} more rows (`nq ingest FILE --source {source}`), "
                f"then `nq run --source {source}`"
            )
        return f"source {source!r} has {rows} rows but no model yet. Fix: `nq run --source {source}`"
    known = stored | set(wh.artifact_sources("serving_state"))
    return unknown_name("source", source, known, "pick a source listed" if known else FIRST_STEP)


def cmd_keys(args, settings: Settings) -> int:
    import json

    from nq_dagster.serve.keys import KeyStore

    wh = Warehouse.from_settings(settings).ensure()
    store = KeyStore(wh.home)
    if args.keys_command == "create":
        key, rec = store.create(
            args.role, args.rate, args.burst, args.max_concurrent, args.name or "", tenant=args.tenant
        )
        of = f", tenant {rec.tenant}" if rec.tenant else ""
        said = f"role {rec.role}{of}, rate {args.rate}, burst {rec.burst}"
        print(f"key id {rec.id} ({said}). The key, shown once:")
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
