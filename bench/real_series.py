"""Real series that packages ship offline, each through `nq ingest` and `nq run` as a user would (default
config), and the model against every baseline on the same rows under the same scoring rule.

    .venv/bin/pip install -e '.[bench]'        # pmdarima, reservoirpy (statsmodels is a runtime dependency)
    .venv/bin/python bench/real_series.py [--out bench/results/real_series.md] [--only taylor,sunspots]

For every series: rows, held-out predictions, the fused model's directional accuracy, each baseline's accuracy
(persistence, seasonal naive where a season is detected, AR(p) by AIC on levels and on changes, a plain ESN),
the one-sided p-values that the best baseline is more accurate (McNemar) and has lower squared error
(Diebold-Mariano), ECE over all held-out rows and the last 30 %, the verdict and the validation score. The
figures are what the validation report of each source says (the same `evaluate` on the stored fit).
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


def load_series() -> dict[str, pd.DataFrame]:
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
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench/results/real_series.md"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    series = load_series()
    if args.only:
        series = {k: v for k, v in series.items() if k in args.only.split(",")}
    home = Path(tempfile.mkdtemp(prefix="nq-real-")) / "nq"
    env = {**os.environ, "NQ_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    files = []
    for name, df in series.items():
        path = home.parent / f"{name}.csv"
        df.to_csv(path, index=False)
        files.append(str(path))
    log = []
    for f in files:
        p = subprocess.run(NQ + ["ingest", f], env=env, capture_output=True, text=True, cwd=ROOT)
        log.append(p.stdout + p.stderr)
    t = time.perf_counter()
    p = subprocess.run(NQ + ["run"], env=env, capture_output=True, text=True, cwd=ROOT)
    run_s = time.perf_counter() - t
    log.append(p.stdout + p.stderr)
    print("\n".join(log))

    from nq_dagster.store import Warehouse
    from nq_dagster.validation.evaluate import evaluate

    wh = Warehouse(home)
    rows = []
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
                "verdict": m["verdict"][:90],
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    md = (
        table.to_markdown(index=False, floatfmt=".3g") if hasattr(table, "to_markdown") else table.to_string()
    )
    text = f"`nq run` over {len(series)} series: {run_s:.0f} s wall on this machine.\n\n{md}\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
