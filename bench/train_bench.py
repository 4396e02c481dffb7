"""Training time of the whole graph against series length (issue 16: <= 60 s for 10,000 rows on the 2-core
machine, growing no faster than linearly), and the fusion step against its peer in the same run: the same
walk-forward with scikit-learn's RidgeCV (SVD of the n x p design per fit) in place of `RidgeBasis` (one
eigen-decomposition of the p x p Gram matrix shared by every target).

    .venv/bin/python -m bench.train_bench [--sizes 3000,10000,30000]

For each size: a Mackey-Glass source (tau 17) of that many rows through `nq ingest` and `nq run` in a fresh
data directory (default config); wall time of `nq run`, the Dagster step durations of the run, and the ratio
to the smallest size against the ratio of rows (linear growth: equal ratios).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)

ROOT = Path(__file__).resolve().parents[1]


def step_times(home: Path) -> dict[str, float]:
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    from dagster import DagsterInstance

    inst = DagsterInstance.get()
    run = [r for r in inst.get_runs(limit=5) if r.tags.get("nq/source")][0]
    return {s.step_key: s.end_time - s.start_time for s in inst.get_run_step_stats(run.run_id)}


def fusion_peer(home: Path, source: str) -> tuple[float, float]:
    """(fusion with RidgeBasis, fusion with sklearn RidgeCV): seconds for the same walk-forward fits."""
    from unittest import mock

    from sklearn.linear_model import Ridge, RidgeCV

    from nq_dagster.config import load_config
    from nq_dagster.fusion import baselines as bl
    from nq_dagster.fusion import ridge
    from nq_dagster.fusion import walkforward as wf
    from nq_dagster.fusion.pipeline import run_fusion
    from nq_dagster.store import Warehouse

    wh = Warehouse(home)
    feat = wh.read_table("features", source)
    states = wh.load_artifact("reservoir_states", source)["states"]
    sel = wh.load_artifact("feature_selection", source)["selected"]
    cfg = load_config(home)

    class SkBasis:  # RidgeBasis's interface, scikit-learn's computation
        def __init__(self, X, cols, gram=None):
            self.cols = np.asarray(cols, dtype=np.int64)
            A = X[:, self.cols]
            self.mean, sd = A.mean(axis=0), A.std(axis=0)
            self.scale = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(self.mean)), sd, 1.0)
            self.A = (A - self.mean) / self.scale

        def fit(self, y, intercept, held=None):
            if held is not None:  # the penalty on held-out rows, as RidgeBasis does: one fit per penalty
                Zh = (held[0][:, self.cols] - self.mean) / self.scale
                fits = [Ridge(alpha=a, fit_intercept=intercept).fit(self.A, y) for a in ridge.ALPHAS]
                r = min(fits, key=lambda m: float(np.mean((held[1] - m.predict(Zh)) ** 2)))
                r.alpha_ = r.alpha
            else:
                r = RidgeCV(alphas=ridge.ALPHAS, fit_intercept=intercept).fit(self.A, y)
            return ridge.LinearStage(
                0,
                0,
                self.mean,
                self.scale,
                np.asarray(r.coef_, float),
                float(r.intercept_),
                float(r.alpha_),
                self.cols.copy(),
            )

    t = time.perf_counter()
    run_fusion(feat, states, sel, cfg)
    ours = time.perf_counter() - t
    with mock.patch.object(wf, "RidgeBasis", SkBasis), mock.patch.object(bl, "RidgeBasis", SkBasis):
        t = time.perf_counter()
        run_fusion(feat, states, sel, cfg)
        peer = time.perf_counter() - t
    return ours, peer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="3000,10000,30000")
    ap.add_argument("--peer-size", type=int, default=10000)
    args = ap.parse_args()
    from nq_dagster.demo import mackey_glass

    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        home = Path(tempfile.mkdtemp(prefix=f"nq-train-{n}-")) / "nq"
        env = {**os.environ, "NQ_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
        csv = home.parent / "mg.csv"
        mackey_glass(n).to_csv(csv, index=False)
        subprocess.run(
            [sys.executable, "-m", "nq_dagster.cli", "ingest", str(csv), "--source", "mg"],
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "nq_dagster.cli", "run", "--source", "mg"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        wall = time.perf_counter() - t
        if p.returncode:
            print(p.stdout, p.stderr)
            return 1
        steps = step_times(home)
        results.append((n, wall, steps, home))
        top = sorted(steps.items(), key=lambda kv: -kv[1])[:5]
        print(
            f"{n:>6} rows: nq run {wall:6.1f} s wall; slowest steps: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in top),
            flush=True,
        )
    n0, w0 = results[0][0], results[0][1]
    print("\n| rows | nq run wall (s) | fusion_model step (s) | time ratio to the smallest | rows ratio |")
    print("|---|---|---|---|---|")
    for n, wall, steps, _ in results:
        print(
            f"| {n:,} | {wall:.1f} | {steps.get('fusion_model', float('nan')):.1f} | {wall / w0:.2f} | "
            f"{n / n0:.2f} |"
        )
    for n, _, _, home in results:
        if n == args.peer_size:
            ours, peer = fusion_peer(home, "mg")
            print(
                f"\nfusion at {n:,} rows (fused model, two ablations, five baselines): RidgeBasis "
                f"{ours:.1f} s, "
                f"peer scikit-learn RidgeCV {peer:.1f} s: {peer / ours:.1f}x faster"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
