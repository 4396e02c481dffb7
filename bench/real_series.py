"""Real series that packages ship offline, and generated chaotic ones of known dynamics, each through
`nq ingest` and `nq run` as a user would (default config), and the model against every baseline on the same
rows under the same scoring rule.

    .venv/bin/pip install -e '.[bench]'        # pmdarima, reservoirpy (statsmodels is a runtime dependency)
    .venv/bin/python bench/real_series.py [--out bench/results/real_series.md] [--only taylor,sunspots]
        [--retrain 0.85] [--chaotic-rows 5000]

For every series: rows, held-out predictions, the fused model's directional accuracy, each baseline's accuracy
(persistence, seasonal naive where a season is detected, AR(p) by AIC on levels and on changes, a plain ESN),
the one-sided p-values that the best baseline is more accurate (McNemar) and has lower squared error
(Diebold-Mariano), ECE over all held-out rows and the last 30 %, the verdict and the validation score; then,
per series and baseline, both models' accuracy and squared error and both one-sided p-values (the "worse"
table: any p below 0.05 there is a baseline significantly better than the fused model). With --retrain f,
each source is first trained on its first f of rows, the rest ingested and `nq run` again: the promotion
gate's decision on that retrain (`validation.promotion`) per source. The figures are what the validation
report of each source says (the same `evaluate` on the stored fit).
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
import pandas as pd

import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)

ROOT = Path(__file__).resolve().parents[1]
NQ = [sys.executable, "-m", "nq_dagster.cli"]


def load_series(chaotic_rows: int = 5000) -> dict[str, pd.DataFrame]:
    import statsmodels.api as sm
    from pmdarima.datasets import load_heartrate, load_msft, load_taylor, load_wineind
    from reservoirpy.datasets import lorenz

    def frame(values, start, freq):
        ts = pd.date_range(start, periods=len(values), freq=freq, tz="UTC")
        return pd.DataFrame(
            {"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": np.asarray(values, float)}
        )

    msft = load_msft()
    el = sm.datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()
    return {
        "taylor": frame(load_taylor(), "2000-06-05", "30min"),  # half-hourly electricity demand
        "msft": pd.DataFrame(
            {
                "timestamp": pd.to_datetime(msft["Date"]).dt.strftime("%Y-%m-%dT00:00:00Z"),
                "value": msft["Close"].to_numpy(float),
            }
        ),  # daily close
        "wineind": frame(load_wineind(), "1980-01-01", "MS"),  # monthly wine sales
        "heartrate": frame(load_heartrate(), "2000-01-01", "s"),
        "elnino": frame(el, "1950-01-01", "MS"),  # monthly sea surface temperature
        "realgdp": frame(sm.datasets.macrodata.load_pandas().data["realgdp"], "1959-01-01", "QS"),
        "nile": frame(sm.datasets.nile.load_pandas().data["volume"], "1871-01-01", "YS"),
        "sunspots": frame(sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"], "1700-01-01", "YS"),
        "lorenz": frame(lorenz(10000)[:, 0], "2020-01-01", "min"),
        "co2": frame(
            sm.datasets.co2.load_pandas().data["co2"].interpolate().bfill().to_numpy(), "1958-03-29", "W-SAT"
        ),  # weekly Mauna Loa CO2 (a yearly season of 52 weeks)
        **{name: frame(v, "2020-01-01", "min") for name, v in chaotic_series(chaotic_rows).items()},
    }


def chaotic_series(n: int = 5000) -> dict[str, np.ndarray]:
    """Generated chaotic series of known dynamics (deterministic; no noise): the x coordinate of the Rössler
    flow (a = b = 0.2, c = 5.7; RK4, dt 0.05, every 2nd step), the Lorenz-Haken single-mode laser's intensity
    (the Lorenz equations, sigma 10, rho 28, beta 8/3, whose x is the laser field: intensity x^2, as the Santa
    Fe laser series; RK4 dt 0.01, every 4th step), the Hénon map (a 1.4, b 0.3) and the Ikeda map (u 0.9)."""

    def rk4(f, x, dt, steps, every):
        out = np.empty((steps, len(x)))
        for i in range(steps * every):
            k1 = f(x)
            k2 = f(x + dt / 2 * k1)
            k3 = f(x + dt / 2 * k2)
            k4 = f(x + dt * k3)
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            if (i + 1) % every == 0:
                out[(i + 1) // every - 1] = x
        return out

    burn = 500
    rossler = rk4(
        lambda s: np.array([-s[1] - s[2], s[0] + 0.2 * s[1], 0.2 + s[2] * (s[0] - 5.7)]),
        np.array([1.0, 1.0, 0.0]),
        0.05,
        n + burn,
        2,
    )[burn:, 0]
    lorenz = rk4(
        lambda s: np.array([10 * (s[1] - s[0]), s[0] * (28 - s[2]) - s[1], s[0] * s[1] - 8 / 3 * s[2]]),
        np.array([1.0, 1.0, 1.0]),
        0.01,
        n + burn,
        4,
    )[burn:, 0]
    henon, ikeda = np.empty((n + burn, 2)), np.empty((n + burn, 2))
    hx, hy, ix, iy = 0.1, 0.1, 0.1, 0.1
    for i in range(n + burn):
        hx, hy = 1 - 1.4 * hx * hx + hy, 0.3 * hx
        t = 0.4 - 6 / (1 + ix * ix + iy * iy)
        ix, iy = 1 + 0.9 * (ix * np.cos(t) - iy * np.sin(t)), 0.9 * (ix * np.sin(t) + iy * np.cos(t))
        henon[i], ikeda[i] = (hx, hy), (ix, iy)
    return {
        "rossler": rossler,
        "laser_lorenz_haken": lorenz**2,
        "henon": henon[burn:, 0],
        "ikeda": ikeda[burn:, 0],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench/results/real_series.md"))
    ap.add_argument("--only", default="")
    ap.add_argument("--retrain", type=float, default=0.0, help="train on this share first, then on all")
    ap.add_argument("--chaotic-rows", type=int, default=5000, help="rows of each generated chaotic series")
    args = ap.parse_args()
    series = load_series(args.chaotic_rows)
    if args.only:
        series = {k: v for k, v in series.items() if k in args.only.split(",")}
    home = Path(tempfile.mkdtemp(prefix="nq-real-")) / "nq"
    env = {**os.environ, "NQ_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    parts = [(1.0,)] if not args.retrain else [(0.0, args.retrain), (args.retrain, 1.0)]
    log, run_s = [], 0.0
    for k, part in enumerate(parts):
        lo, hi = (0.0, 1.0) if len(part) == 1 else part
        for name, df in series.items():
            path = home.parent / f"{name}-{k}.csv"
            df.iloc[int(len(df) * lo) : int(len(df) * hi)].to_csv(path, index=False)
            p = subprocess.run(
                NQ + ["ingest", str(path), "--source", name],
                env=env,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            log.append(p.stdout + p.stderr)
        t = time.perf_counter()
        p = subprocess.run(NQ + ["run"], env=env, capture_output=True, text=True, cwd=ROOT)
        run_s = time.perf_counter() - t  # the last run: every source on all of its rows
        log.append(p.stdout + p.stderr)
    print("\n".join(log))

    from nq_dagster.store import Warehouse
    from nq_dagster.validation.evaluate import evaluate
    from nq_dagster.validation.promotion import versions_table

    wh = Warehouse(home)
    rows, worse = [], []
    for name, df in series.items():
        row = {"series": name, "rows": len(df)}
        try:
            fusion = wh.load_artifact("fusion_model", name)
        except Exception:  # too short to train: the run said why
            row["verdict"] = next(
                (
                    ln.strip()
                    for ln in "\n".join(log).splitlines()
                    if ln.strip().startswith(f"{name}:") and "rows stored" in ln
                ),
                "not trained",
            )
            rows.append(row)
            continue
        ev = evaluate(fusion)
        m, b = ev["metrics"], ev["baselines"].set_index("baseline")
        best = m["best_baseline"]
        row.update(
            {
                "predictions": m["predictions"],
                "season": fusion.get("season"),
                "fused": m["accuracy"],
                **{
                    k: float(b.loc[k, "accuracy"]) if k in b.index else np.nan
                    for k in ("persistence", "seasonal_naive", "ar_levels", "ar_diffs", "esn")
                },
                "best": best,
                "p_best_more_accurate": float(b.loc[best, "p_baseline_more_accurate"]),
                "p_best_lower_mse": float(b.loc[m["best_mse_baseline"], "p_dm_baseline_lower_mse"]),
                "p_fused_more_accurate": float(b.loc[best, "p_model_more_accurate"]),
                "ece": m["ece"],
                "ece_late": m["ece_late"],
                "score": m["score"],
                "chosen": ", ".join(f"{k} {v}" for k, v in fusion["candidates"]["chosen"].items()),
                "verdict": m["verdict"][:90],
            }
        )
        rows.append(row)
        fused_mse = float(ev["ablations"].set_index("model").loc["fused", "mse"])
        for base, r in b.iterrows():
            worse.append(
                {
                    "series": name,
                    "baseline": base,
                    "acc_fused": m["accuracy"],
                    "acc_baseline": r["accuracy"],
                    "mse_fused": fused_mse,
                    "mse_baseline": r["mse"],
                    "p_baseline_more_accurate": r["p_baseline_more_accurate"],
                    "p_baseline_lower_mse": r["p_dm_baseline_lower_mse"],
                    "p_fused_more_accurate": r["p_model_more_accurate"],
                    "p_fused_lower_mse": r["p_dm_model_lower_mse"],
                }
            )

    def md(df: pd.DataFrame) -> str:
        return df.to_markdown(index=False, floatfmt=".3g") if hasattr(df, "to_markdown") else df.to_string()

    worse_df = pd.DataFrame(worse)
    sig = worse_df[(worse_df["p_baseline_more_accurate"] < 0.05) | (worse_df["p_baseline_lower_mse"] < 0.05)]
    text = (
        f"`nq run` over {len(series)} series: {run_s:.0f} s wall on this machine.\n\n"
        f"{md(pd.DataFrame(rows))}\n\nPer baseline (one-sided p-values; below 0.05 in a `baseline` column: "
        f"that baseline is significantly better than the fused model; {len(sig)} such rows):\n\n"
        f"{md(worse_df)}\n"
    )
    if args.retrain:
        decisions = versions_table(wh, list(series))
        text += f"\nPromotion decisions (trained on the first {args.retrain:.0%}, then on all rows):\n\n"
        text += md(decisions.drop(columns=["decided_at"])) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
