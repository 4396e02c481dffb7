"""Prediction latency, throughput and memory (issue 5), against the original platform's published figures:
100-500 ms per input, "1,000+ predictions per second", 1-2 MB per processing cycle (never measured there).

Builds a temporary warehouse with one demo market source (3000 points, default config), then measures:
1. `nq predict --source market_A --values v` end to end, as a user runs it (new process each time: Python
   start, imports, loading the serving state, one prediction, JSON out): p50 / p95 over 20 runs.
2. In-process streaming: one value at a time through `advance` (encode, reservoir step, detectors, fused
   model), carrying the state: p50 / p95 over 300 values.
3. Batch: 1000 new values in one `advance` call (predictions/s), and the fused model alone on 100,000 rows.
4. Memory of one single-value cycle, in a fresh process after a warm-up: the peak of Python and numpy
   allocations (tracemalloc; torch's few kilobytes are not traced) and the growth of peak RSS.

Run: .venv/bin/python -m bench.predict_bench
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def setup(home: Path) -> None:
    from nq_dagster.cli import _setup_env, run_pipeline
    from nq_dagster.demo import write_demo

    wh = _setup_env(str(home))
    write_demo(wh, sources=3, points=3000, seed=0)
    ok = run_pipeline(wh, sources=["market_A"], log=lambda *_: None)
    assert ok.get("market_A"), "pipeline failed"


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def memory_child(home: str) -> None:
    from nq_dagster.fusion.serving import advance
    from nq_dagster.resources.storage import Warehouse

    st = Warehouse(home).load_artifact("serving_state", "market_A")
    _, st = advance(st, [float(st.values[-1])])  # warm-up: kernels, caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _hwm()
    import tracemalloc

    tracemalloc.start()
    _, st = advance(st, [float(st.values[-1]) * 1.001])
    _, peak = tracemalloc.get_traced_memory()
    print(_hwm() - base, peak)


def main() -> None:
    home = Path(tempfile.mkdtemp()) / "nq"
    t = time.perf_counter()
    setup(home)
    print(f"setup (demo data + pipeline for market_A, 3000 points): {time.perf_counter() - t:.1f} s")
    env = {**os.environ, "NQ_HOME": str(home)}
    nq = str(Path(sys.executable).parent / "nq")

    from nq_dagster.fusion.serving import advance
    from nq_dagster.resources.storage import Warehouse

    st0 = Warehouse(home).load_artifact("serving_state", "market_A")
    last = float(st0.values[-1])
    rng = np.random.default_rng(0)

    cli = []
    for _ in range(20):
        v = last * (1 + 0.001 * rng.normal())
        t = time.perf_counter()
        subprocess.run([nq, "predict", "--source", "market_A", "--values", f"{v:.6f}", "--compact"], env=env,
                       check=True, capture_output=True)
        cli.append(time.perf_counter() - t)
    cli_ms = 1000 * np.array(cli)

    st = st0
    path = last * np.exp(np.cumsum(0.001 * rng.normal(size=300)))
    lat = []
    for v in path:
        t = time.perf_counter()
        _, st = advance(st, [v])
        lat.append(time.perf_counter() - t)
    lat_ms = 1000 * np.array(lat[10:])

    vals = last * np.exp(np.cumsum(0.001 * rng.normal(size=1000)))
    t = time.perf_counter()
    rec, _ = advance(st0, vals)
    batch_rate = len(rec) / (time.perf_counter() - t)

    model = st0.model
    d = max(cols.stop for cols, _, _ in model.stages)  # width of the design matrix
    X = rng.normal(size=(100_000, d))
    band = np.full(100_000, 0.1)
    t = time.perf_counter()
    model.predict(X, band)
    model_rate = 100_000 / (time.perf_counter() - t)

    rss, peak = map(int, subprocess.run([sys.executable, "-c", f"from bench.predict_bench import memory_child; memory_child({str(home)!r})"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1].split())

    print("\n| measure | ours | original's published figure |")
    print("|---|---|---|")
    print(f"| `nq predict` end to end (new process), p50 / p95 | {np.percentile(cli_ms, 50):.0f} / "
          f"{np.percentile(cli_ms, 95):.0f} ms | 100-500 ms per input |")
    print(f"| streaming, one value per call (in process), p50 / p95 | {np.percentile(lat_ms, 50):.1f} / "
          f"{np.percentile(lat_ms, 95):.1f} ms | 100-500 ms per input |")
    print(f"| streaming throughput, one value per call | {1000 / lat_ms.mean():,.0f} predictions/s | 1,000+ /s |")
    print(f"| batch of 1000 new values in one call | {batch_rate:,.0f} predictions/s | 1,000+ /s |")
    print(f"| fused model alone, 100,000 rows | {model_rate:,.0f} predictions/s | |")
    print(f"| one single-value cycle: peak of Python/numpy allocations (tracemalloc) | {peak / 2**20:.2f} MiB "
          "| 1-2 MB per cycle |")
    print(f"| one single-value cycle: peak RSS growth after a warm-up | {rss / 2**20:.2f} MiB | 1-2 MB per cycle |")
    print(f"\nconfig: neuron_count {st0.cfg.neuron_count}, reservoir_size {st0.cfg.reservoir_size}, "
          f"window_bins {st0.cfg.window_bins}, encoding {st0.cfg.encoding}; CPU threads {os.cpu_count()}")


if __name__ == "__main__":
    main()
