"""Ingest throughput and memory: `Ingestor.ingest_file` (every row validated, Parquet written atomically, the
log appended) on a 1,000,000-row CSV, against two peers in the same run on the same file: DuckDB `read_csv`
count, and polars `read_csv` alone. Each runs in a fresh process, so the peak resident memory is its own; each
runs three times, interleaved, and the median time is shown (a 2-core machine's figures move by a quarter
between runs).

Targets (issue 14): ingest at >= 0.5x the speed of each peer; peak RSS <= 4x the file size.

Run: .venv/bin/python -m bench.ingest_bench [rows]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
what, path, home = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if what == "nq":
    from nq_dagster.ingest import Ingestor
    from nq_dagster.store import Warehouse
    wh = Warehouse(home)
    t = time.perf_counter()
    r = Ingestor(wh).ingest_file(path)
    dt, n = time.perf_counter() - t, r.rows_accepted
    assert r.status == "ingested", r.reason
elif what == "baseline":
    import polars  # noqa: F401
    from nq_dagster.ingest import Ingestor  # noqa: F401
    dt, n = 0.0, 0
elif what == "duckdb":
    import duckdb
    t = time.perf_counter()
    n = duckdb.sql(f"SELECT count(*) FROM read_csv('{path}')").fetchall()[0][0]
    dt = time.perf_counter() - t
else:
    import polars as pl
    t = time.perf_counter()
    n = pl.read_csv(path).height
    dt = time.perf_counter() - t
print(json.dumps({"s": dt, "rows": n, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run(what: str, path: Path, home: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, what, str(path), str(home)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(rows: int = 1_000_000) -> None:
    tmp = Path(tempfile.mkdtemp())
    ts = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.arange(rows), unit="s")
    df = pd.DataFrame(
        {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": np.cumsum(np.random.default_rng(0).normal(size=rows)),
        }
    )
    path = tmp / "big.csv"
    df.to_csv(path, index=False)
    size_mb = path.stat().st_size / 2**20
    base = run("baseline", tmp / "none", tmp)  # interpreter + imports only, for the RSS of an empty process
    runs = {w: [] for w in ("duckdb", "polars", "nq")}
    for i in range(3):
        for w in runs:
            runs[w].append(run(w, path, tmp / f"nq-{w}-{i}"))
    res = {
        w: {
            "s": float(np.median([r["s"] for r in rs])),
            "rows": rs[0]["rows"],
            "rss_kb": max(r["rss_kb"] for r in rs),
            "all": [r["s"] for r in rs],
        }
        for w, rs in runs.items()
    }
    assert res["nq"]["rows"] == res["duckdb"]["rows"] == res["polars"]["rows"] == rows
    print(f"\nfile: {rows:,} rows, {size_mb:.1f} MiB\n")
    print("| what | median time (3 runs) | runs | rows/s | peak RSS | nq's speed as a share of this |")
    print("|---|---|---|---|---|---|")
    for w, label in (
        ("nq", "`nq` ingest (validated, Parquet written, logged)"),
        ("duckdb", "DuckDB `read_csv` count"),
        ("polars", "polars `read_csv`"),
    ):
        r = res[w]
        ratio = "" if w == "nq" else f"{r['s'] / res['nq']['s']:.2f}x"
        each = " / ".join(f"{x:.2f}" for x in r["all"])
        print(
            f"| {label} | {r['s']:.2f} s | {each} | {rows / r['s']:,.0f} | {r['rss_kb'] / 1024:.0f} MiB | "
            f"{ratio} |"
        )
    extra = (res["nq"]["rss_kb"] - base["rss_kb"]) / 1024
    print(
        f"\nnq peak RSS {res['nq']['rss_kb'] / 1024:.0f} MiB = {res['nq']['rss_kb'] / 1024 / size_mb:.1f}x "
        "the file; "
        f"above an idle interpreter with polars imported ({base['rss_kb'] / 1024:.0f} MiB): {extra:.0f} MiB "
        "= "
        f"{extra / size_mb:.1f}x the file"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
