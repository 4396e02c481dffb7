"""Ingest throughput: `Ingestor.ingest_file` on a 1,000,000-row CSV against DuckDB's own read_csv on the same file.

Run: .venv/bin/python -m bench.ingest_bench [rows]
"""

import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from nq_dagster.ingest import Ingestor
from nq_dagster.resources.storage import Warehouse


def main(rows: int = 1_000_000) -> None:
    tmp = Path(tempfile.mkdtemp())
    ts = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.arange(rows), unit="s")
    df = pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "value": np.cumsum(np.random.default_rng(0).normal(size=rows))})
    path = tmp / "big.csv"
    df.to_csv(path, index=False)
    t = time.perf_counter()
    n_duck = duckdb.sql(f"SELECT count(*) FROM read_csv('{path}')").fetchall()[0][0]
    t_duck = time.perf_counter() - t
    t = time.perf_counter()
    r = Ingestor(Warehouse(tmp / "nq")).ingest_file(path)
    t_nq = time.perf_counter() - t
    assert r.rows_accepted == rows == n_duck, r.reason
    print(f"rows {rows}: nq ingest {t_nq:.2f} s ({rows / t_nq:,.0f} rows/s, validated + Parquet written); "
          f"duckdb read_csv count {t_duck:.2f} s ({rows / t_duck:,.0f} rows/s); ratio nq/duckdb time {t_nq / t_duck:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
