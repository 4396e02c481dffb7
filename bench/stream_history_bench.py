"""Cost of a small streaming run against the size of the source's history (issue 14): a run that predicts 5
new rows should cost the same with 3,000 or 300,000 stored rows, since it reads only what it needs.

One Mackey-Glass source trained on 3,000 points (default config). Then, in one process, the `streaming` job
(ingest the landed file, predict its rows, the freshness check and the predictions suite) is run in process
for files of 5 rows, each newer than everything stored: K runs with the 3,000-row history, then K runs after
the source's history has grown to 300,000 rows in `raw_ticks` and `predictions` (older rows, written as a bulk
load of history would be: one Parquet part each). Peer in the same run: the same job at 3,000 rows (the ratio
is the growth).

Run: .venv/bin/python -m bench.stream_history_bench [--rows 300000] [--runs 5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from nq_dagster.definitions import defs
    from nq_dagster.demo import mackey_glass
    from nq_dagster.runner import open_instance, prepare_home, run_config_for, run_pipeline

    wh = prepare_home(str(Path(tempfile.mkdtemp()) / "nq"))
    n_train, small = 3000, 5
    total = n_train + small * 3 * args.runs
    df = mackey_glass(total)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    d = wh.landing / "mackey_glass"
    d.mkdir(parents=True, exist_ok=True)
    df.iloc[:n_train].assign(timestamp=lambda x: x["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(
        d / "history.csv", index=False
    )
    assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
    job = defs.resolve_job_def("streaming")
    instance = open_instance(wh)
    step = df["timestamp"].iloc[1] - df["timestamp"].iloc[0]

    def timed_runs(first: int) -> list[float]:
        out = []
        for k in range(args.runs):
            lo = n_train + (first + k) * small
            part = df.iloc[lo : lo + small]
            tmp = wh.home / "next.csv"
            part.assign(timestamp=part["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(
                tmp, index=False
            )
            tmp.rename(d / f"tick-{first + k:04d}.csv")
            t = time.perf_counter()
            res = job.execute_in_process(
                partition_key="mackey_glass",
                instance=instance,
                run_config=run_config_for(wh),
                tags={"nq/source": "mackey_glass"},
            )
            out.append(time.perf_counter() - t)
            assert res.success
            mats = res.asset_materializations_for_node("live_predictions")
            assert mats and mats[-1].metadata["new_rows"].value == small, "each run must predict its new rows"
        return out

    timed_runs(0)  # warm: imports and first loads
    small_hist = timed_runs(args.runs)
    n_small_hist = len(wh.read_table("raw_ticks", "mackey_glass"))

    # grow the history with older rows: what a bulk load of the source's past leaves in the warehouse
    old = args.rows - n_small_hist
    t_first = df["timestamp"].iloc[0]
    ts = pd.DatetimeIndex([t_first - step * (old - i) for i in range(old)])
    rng = np.random.default_rng(0)
    raw = pd.DataFrame({"source": "mackey_glass", "timestamp": ts, "value": rng.normal(size=old)})
    schema = wh.read_part(wh.table_parts("raw_ticks", "mackey_glass")[0]).schema
    raw = raw.reindex(columns=schema.names)
    wh.write_table(
        "raw_ticks",
        "mackey_glass",
        pa.Table.from_pandas(raw, preserve_index=False).cast(schema),
        part="part-history",
    )
    preds = wh.read_part(wh.table_parts("predictions", "mackey_glass")[0]).to_pandas()
    reps = int(np.ceil(old / len(preds)))
    hist = pd.concat([preds] * reps, ignore_index=True).iloc[:old].copy()
    hist["timestamp"] = ts
    hist["prediction_id"] = [f"history-{i}" for i in range(old)]
    hist["train_end"] = (
        (ts - step).astype(preds["train_end"].dtype)
        if preds["train_end"].dtype.kind == "M"
        else (ts - step).asi8 // 1000
    )
    wh.write_table(
        "predictions",
        "mackey_glass",
        pa.Table.from_pandas(hist, preserve_index=False).cast(
            wh.read_part(wh.table_parts("predictions", "mackey_glass")[0]).schema
        ),
        part="history",
    )
    n_big = len(wh.read_table("raw_ticks", "mackey_glass"))
    big_hist = timed_runs(2 * args.runs)

    a, b = statistics.median(small_hist), statistics.median(big_hist)
    print(
        f"\n| streaming run of {small} new rows (in process; ingest, predict, checks) | median of "
        f"{args.runs} | runs |"
    )
    print("|---|---|---|")
    print(
        f"| history {n_small_hist:,} rows (peer) | {a:.2f} s | {', '.join(f'{x:.2f}' for x in small_hist)} |"
    )
    print(f"| history {n_big:,} rows | {b:.2f} s | {', '.join(f'{x:.2f}' for x in big_hist)} |")
    print(f"\nratio {n_big:,} / {n_small_hist:,} rows: {b / a:.2f}x (flat = 1.0)")


if __name__ == "__main__":
    main()
