"""Interval coverage of the conformal state (fusion/intervals.py) under ACI's step sizes, before/after, on
generated series of known dynamics: overall, over the last 30 %, and the worst 500-row stretch.

    .venv/bin/python bench/interval_bench.py [--rows 5000]

Each series is forecast by the one walk-forward rule (`walk_forward`, AR on up to 16 recent changes with and
without the level: a proxy of the fused model that runs in seconds) and its walk-forward predictions get
their intervals by `intervals.walk_forward_intervals`, once with the old single step (0.02 at both levels)
and once with the per-level steps (`intervals.step_sizes`). Columns: coverage minus the level in points,
overall / last 30 % / the worst and best 500-row stretch, and the geometric-mean width against the old step.
The series: Mackey-Glass (the demo's generator, 2,500 and `--rows` points), the generated chaotic series of
bench/real_series.py (Rossler, Lorenz-Haken laser intensity, Henon, Ikeda), a random walk and a random walk
whose noise grows 4.5-fold (a drifting scale).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from real_series import chaotic_series  # noqa: E402

from nq_dagster.demo import mackey_glass_series  # noqa: E402
from nq_dagster.fusion import intervals  # noqa: E402
from nq_dagster.fusion.walkforward import lag_matrix, make_targets, training_schedule, walk_forward  # noqa: E402

OLD_GAMMA = 0.02  # the single step used before (both levels)


def series(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {
        "mackey_glass_2500": mackey_glass_series(2500, seed=0),
        f"mackey_glass_{rows}": mackey_glass_series(rows, seed=1),
    }
    out.update(chaotic_series(rows))
    out["random_walk"] = 100 + np.cumsum(rng.standard_normal(rows))
    out["drifting_scale"] = np.cumsum(rng.standard_normal(rows) * np.exp(np.linspace(0, 1.5, rows)))
    return out


def forecast(v: np.ndarray):
    targets = make_targets(v, 1, 0.1, 50)
    s = training_schedule(len(v), 500, 250)
    X = lag_matrix(v, 16, level=True)
    variants = [np.arange(p) for p in (2, 4, 8, 16)] + [np.r_[np.arange(p), 16] for p in (2, 8, 16)]
    fused, _ = walk_forward(
        X,
        targets,
        1,
        s.train_min,
        s.refit_every,
        0.3,
        n_base=X.shape[1],
        warmup=s.warmup,
        base_variants=variants,
    )
    return fused, targets


def figures(fused, targets, v) -> tuple[list, np.ndarray]:
    iv = intervals.walk_forward_intervals(fused, targets, v, 1)
    rows = fused["row"].to_numpy()
    y = targets["change"].to_numpy()[rows]
    ok = np.isfinite(y)
    out = []
    for j, level in enumerate(intervals.LEVELS):
        inside = (np.abs(y[ok] - iv["centre"][ok]) <= iv["half"][ok, j]).astype(float)
        n = len(inside)
        roll = np.convolve(inside, np.ones(500) / 500, "valid")
        out.append(
            (
                100 * (inside.mean() - level),
                100 * (inside[n - round(0.3 * n) :].mean() - level),
                100 * (roll.min() - level),
                100 * (roll.max() - level),
            )
        )
    return out, np.log(np.maximum(iv["half"][ok], 1e-300)).mean(axis=0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    a = ap.parse_args()
    steps = np.round(intervals.step_sizes(intervals.LEVELS), 4).tolist()
    print(
        f"load average {os.getloadavg()[0]:.1f}; old: gamma {OLD_GAMMA} at both levels; new: "
        f"gamma_L = {intervals.GAMMA_SCALE} x (1 - L) = {steps}"
    )
    print(
        "| series | predictions | step | 80 %: all / last 30 % / 500-row worst, best | 95 %: same "
        "| width vs old |"
    )
    print("|---|---|---|---|---|---|")
    new_steps = intervals.step_sizes
    for name, v in series(a.rows).items():
        t = time.perf_counter()
        fused, targets = forecast(v)
        intervals.step_sizes = lambda lv: np.full(len(lv), OLD_GAMMA)  # the old rule, for the same rows
        old, w_old = figures(fused, targets, v)
        intervals.step_sizes = new_steps
        new, w_new = figures(fused, targets, v)
        for label, f, w in (("old", old, w_old), ("new", new, w_new)):
            cells = [f"{c[0]:+.1f} / {c[1]:+.1f} / {c[2]:+.1f}, {c[3]:+.1f}" for c in f]
            ratio = " / ".join(f"{x:.2f}" for x in np.exp(w - w_old))
            print(f"| {name} | {len(fused)} | {label} | {cells[0]} | {cells[1]} | {ratio} |")
        print(f"<!-- {name}: {time.perf_counter() - t:.1f} s -->", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
