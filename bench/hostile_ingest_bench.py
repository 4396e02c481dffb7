"""Hostile files against `Ingestor.ingest_file` with the default limits (issue 31 item 3): each in a fresh
process, its wall time and peak resident memory (VmHWM), against an idle interpreter with the ingest
imported. The files: a gzip bomb named .csv (~4 MB -> 4 GiB), a Parquet file of 250M rows (a few MB), a
100,000-column CSV, a 100 MB line, and the worst file that is read whole: a CSV just under 64 MiB whose last
row is bad, so the polars reader and then the general (pandas) reader both read it.

Run: .venv/bin/python -m bench.hostile_ingest_bench; with `--paths`, the fast path and the bad-row path
(general reader) on CSV files of ~48 MiB instead. The children import `nq_dagster` from the working
directory: `cd CHECKOUT && PYTHONPATH=$PWD python /path/to/bench/hostile_ingest_bench.py --paths` measures
that checkout's ingest (before/after in one run).
"""

import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHILD = r"""
import json, sys, time
from pathlib import Path
from nq_dagster.ingest import Ingestor
from nq_dagster.store import Warehouse
path, home = Path(sys.argv[1]), sys.argv[2]
wh = Warehouse(home).ensure()
ing = Ingestor(wh)
t = time.perf_counter()
r = ing.ingest_file(path) if path.name != "idle" else None
dt = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss keeps the forking parent's high-water mark across exec)
hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
peak = int(hwm.split()[1]) / 1024
status, reason = (r.status, r.reason[-160:]) if r else ("-", "")
print(json.dumps({"status": status, "s": dt, "peak_mib": peak, "reason": reason}))
"""


def make_files(d: Path) -> dict[str, Path]:
    files = {}
    member = gzip.compress(b"timestamp,value\n" + b"0" * (64 << 20), 9)
    files["gzip bomb named .csv"] = d / "bomb.csv"
    files["gzip bomb named .csv"].write_bytes(member * 64)
    p = d / "rows.parquet"
    chunk = pa.table(
        {"timestamp": pa.array([0] * 1_000_000, pa.int64()), "value": pa.array([1.0] * 1_000_000)}
    )
    with pq.ParquetWriter(p, chunk.schema, compression="zstd") as w:
        for _ in range(250):
            w.write_table(chunk)
    files["Parquet of 250M rows"] = p
    p = d / "wide.csv"
    p.write_text(
        "timestamp," + ",".join(f"c{i}" for i in range(100_000)) + "\n2026-01-01" + ",1" * 100_000 + "\n"
    )
    files["100,000 columns"] = p
    p = d / "line.csv"
    p.write_bytes(b"timestamp,value\n2026-01-01," + b"1" * (100 << 20) + b"\n")
    files["a 100 MB line"] = p
    p = d / "lastbad.csv"
    rows = (63 << 20) // 32
    with open(p, "w") as fh:
        fh.write("timestamp,value\n")
        for i in range(rows):
            fh.write(f"{1_700_000_000 + i},{i % 1000}.123456789\n")
        fh.write("1600000000,x\n")
    files["64 MiB CSV, last row bad (read twice)"] = p
    return files


def make_path_files(d: Path, mib: int = 48) -> dict[str, Path]:
    """The fast path and the bad-row (general reader) path on CSV files of the same shape: good; last row bad;
    one bad row in 100 (named: the first 1,000); the good rows with every 1,000th timestamp repeated (the
    repeat rule's shown text read again)."""
    rows = (mib << 20) // 32
    files = {}

    def write(name: str, bad_every: int = 0, last_bad: bool = False, repeat_every: int = 0) -> Path:
        p = d / name
        with open(p, "w") as fh:
            fh.write("timestamp,value\n")
            for i in range(rows):
                ts = 1_700_000_000 + i - (1 if repeat_every and i and i % repeat_every == 0 else 0)
                value = "x" if bad_every and i % bad_every == bad_every - 1 else f"{i % 1000}.123456789"
                fh.write(f"{ts},{value}\n")
            if last_bad:
                fh.write("1600000000,x\n")
        return p

    files["CSV, good (fast path)"] = write("good.csv")
    files["CSV, last row bad (general path)"] = write("lastbad.csv", last_bad=True)
    files["CSV, 1 row in 100 bad"] = write("manybad.csv", bad_every=100)
    files["CSV, 1 timestamp in 1,000 repeated"] = write("repeats.csv", repeat_every=1000)
    return files


def run(path: Path, home: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(home)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    paths = "--paths" in sys.argv  # the fast and bad-row paths only (issue 31's memory bound)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = make_path_files(d) if paths else make_files(d)
        idle = run(d / "idle", d / "home")
        print(f"idle interpreter with the ingest imported: {idle['peak_mib']:.0f} MiB\n")
        print("| file | size on disk | outcome | time | peak RSS | above idle | x file |")
        print("|---|---|---|---|---|---|---|")
        for name, path in files.items():
            r = run(path, d / "home")
            size = path.stat().st_size / 2**20
            reason = r["reason"].split(": ", 1)[-1][:90] if r["status"] == "quarantined" else r["status"]
            peak = r["peak_mib"]
            print(
                f"| {name} | {size:.1f} MiB | {r['status']}: {reason} | {r['s']:.2f} s | {peak:.0f} MiB "
                f"| {peak - idle['peak_mib']:.0f} MiB | {(peak - idle['peak_mib']) / size:.1f} |"
            )


if __name__ == "__main__":
    main()
