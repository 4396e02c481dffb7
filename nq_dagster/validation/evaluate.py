"""Evaluation of one source's walk-forward predictions on realized outcomes, and the validation score.

The score is the share of named criteria that pass, each a test on held-out
predictions with a stated threshold; every criterion and its figure is listed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.walkforward import CLASSES, direction_of
from nq_dagster.validation.stats import (
    accuracy_test,
    brier_score,
    diebold_mariano,
    fmt_p,
    log_loss,
    precision_recall,
    reliability,
)

ALPHA = 0.05

ECE_MAX = 0.05


def evaluate(fusion: dict, anomaly_truth: np.ndarray | None = None) -> dict:
    targets, fused = fusion["targets"], fusion["fused"]
    rows = fused["row"].to_numpy()
    y_dir = targets["direction"].to_numpy()[rows]
    y_chg = targets["change"].to_numpy()[rows]
    realized = y_dir != -9
    f = fused.loc[realized]
    rows, y_dir, y_chg = rows[realized], y_dir[realized], y_chg[realized]
    band = targets["band"].to_numpy()[rows]
    correct = f["direction"].to_numpy() == y_dir
    class_share = {int(c): float(np.mean(y_dir == c)) for c in CLASSES}
    acc = accuracy_test(correct, max(class_share.values()))
    P = f[["p_down", "p_hold", "p_up"]].to_numpy()
    y_idx = np.searchsorted(CLASSES, y_dir)
    ece, diagram = reliability(f["confidence"].to_numpy(), correct)
    # baselines on the same rows
    last = np.nan_to_num(targets["last_change"].to_numpy()[rows])
    ar = fusion["ar"][rows]
    train_dirs = targets["direction"].to_numpy()[: int(f["train_end"].min()) + 1]
    majority = int(pd.Series(train_dirs[train_dirs != -9]).mode().iloc[0])
    baselines = {
        "persistence": {"direction": direction_of(last, band), "change": last},
        "ar5": {"direction": direction_of(ar, band), "change": ar},
        "majority": {"direction": np.full(len(rows), majority), "change": np.zeros(len(rows))},
    }
    err_model = (f["pred_change"].to_numpy() - y_chg) ** 2
    base_rows = []
    for name, b in baselines.items():
        dm = diebold_mariano(err_model, (b["change"] - y_chg) ** 2)
        base_rows.append({"baseline": name, "accuracy": float(np.mean(b["direction"] == y_dir)),
                          "mse": float(np.mean((b["change"] - y_chg) ** 2)), "dm_stat": dm["dm_stat"],
                          "p_dm": dm["p_value"]})
    base_df = pd.DataFrame(base_rows)
    abl_rows = [{"model": "fused", "accuracy": acc["accuracy"], "mse": float(err_model.mean())}]
    for name, a in fusion["ablations"].items():
        a = a.set_index("row").loc[rows]
        abl_rows.append({"model": name, "accuracy": float(np.mean(a["direction"].to_numpy() == y_dir)),
                         "mse": float(np.mean((a["pred_change"].to_numpy() - y_chg) ** 2))})
    abl_df = pd.DataFrame(abl_rows)
    vol = targets["volatility"].to_numpy()[rows]
    q = np.quantile(vol, [1 / 3, 2 / 3])
    regime = np.where(vol <= q[0], "low", np.where(vol <= q[1], "mid", "high"))
    regime_df = pd.DataFrame({"regime": regime, "correct": correct}).groupby("regime")["correct"].agg(["mean", "size"])
    regime_df = regime_df.rename(columns={"mean": "accuracy", "size": "n"}).reset_index()
    clim = np.tile([class_share_train(train_dirs, c) for c in CLASSES], (len(rows), 1))
    brier, brier_clim = brier_score(P, y_idx), brier_score(clim, y_idx)
    best = base_df.sort_values("accuracy", ascending=False).iloc[0]
    ar_row = base_df.set_index("baseline").loc["ar5"]
    pers_row = base_df.set_index("baseline").loc["persistence"]
    criteria = [
        ("directional accuracy above the best constant predictor (binomial p < 0.05)", acc["p_value"] < ALPHA,
         f"acc {acc['accuracy']:.3f} vs {acc['p0']:.3f}, {fmt_p(acc['p_value'])}"),
        ("lower squared error than persistence (Diebold-Mariano p < 0.05)", pers_row["p_dm"] < ALPHA,
         fmt_p(pers_row['p_dm'])),
        ("lower squared error than AR(5) (Diebold-Mariano p < 0.05)", ar_row["p_dm"] < ALPHA, fmt_p(ar_row['p_dm'])),
        (f"expected calibration error <= {ECE_MAX}", ece <= ECE_MAX, f"ECE = {ece:.3f}"),
        ("Brier score below the training-frequency forecast", brier < brier_clim, f"{brier:.3f} vs {brier_clim:.3f}"),
        ("fused accuracy at least that of every ablation", acc["accuracy"] >= abl_df["accuracy"].max() - 1e-12,
         ", ".join(f"{m} {a:.3f}" for m, a in zip(abl_df["model"], abl_df["accuracy"], strict=True))),
    ]
    crit_df = pd.DataFrame(criteria, columns=["criterion", "passed", "figure"])
    metrics = {
        "predictions": int(len(rows)), "accuracy": acc["accuracy"], "acc_ci_low": acc["ci_low"],
        "acc_ci_high": acc["ci_high"], "p_binom": acc["p_value"], "majority_share": acc["p0"],
        "best_baseline": str(best["baseline"]), "best_baseline_acc": float(best["accuracy"]),
        "p_dm_best": float(base_df.set_index("baseline").loc[best["baseline"], "p_dm"]),
        "p_dm_ar": float(ar_row["p_dm"]), "p_dm_persistence": float(pers_row["p_dm"]),
        "brier": brier, "log_loss": log_loss(P, y_idx), "ece": ece, "mean_confidence": float(f["confidence"].mean()),
        "score": round(100.0 * crit_df["passed"].mean(), 1),
    }
    out = {"metrics": metrics, "baselines": base_df, "ablations": abl_df, "regimes": regime_df, "criteria": crit_df,
           "reliability": pd.DataFrame(diagram), "rows": rows, "correct": correct, "y_dir": y_dir,
           "pred_dir": f["direction"].to_numpy(), "baseline_dirs": {k: v["direction"] for k, v in baselines.items()}}
    if anomaly_truth is not None:
        # a point is flagged when its realized change is a > 4 sigma surprise to the forecast of the model
        # that made it (its own error scale, fitted before the row)
        z = np.abs(y_chg - f["pred_change"].to_numpy()) / np.maximum(f["error_scale"].to_numpy(), 1e-12)
        pts = rows + 1  # the change from row r lands on point r + 1
        ok = pts < len(anomaly_truth)
        pr = precision_recall((z > 4)[ok], np.asarray(anomaly_truth, bool)[pts[ok]])
        out["anomalies"] = pr
        out["anomaly_points"] = {"flagged": pts[ok][(z > 4)[ok]],
                                 "recorded": np.nonzero(np.asarray(anomaly_truth, bool))[0]}
        metrics["anomaly_precision"], metrics["anomaly_recall"] = pr["precision"], pr["recall"]
    return out


def class_share_train(train_dirs: np.ndarray, c: int) -> float:
    d = train_dirs[train_dirs != -9]
    return (np.sum(d == c) + 1) / (len(d) + 3)


def evaluate_live(live: pd.DataFrame, timestamps: pd.Series, targets: pd.DataFrame) -> dict | None:
    """What was served live (the streaming job's and the prediction server's records in `predictions`), scored on
    the outcomes that have been realized since: accuracy with its 95 % interval and the test against the
    majority class of the same rows, and how the stated confidence compares with the accuracy achieved.
    None when nothing served live has a realized outcome yet."""
    if live is None or not len(live):
        return None
    ts = pd.to_datetime(timestamps, utc=True).to_numpy()
    lt = pd.to_datetime(live["timestamp"], utc=True).to_numpy()
    idx = np.searchsorted(ts, lt)
    ok = idx < len(ts)
    ok[ok] = ts[idx[ok]] == lt[ok]
    y = np.full(len(live), -9)
    y[ok] = targets["direction"].to_numpy()[idx[ok]]
    realized = y != -9
    if not realized.any():
        return {"served": len(live), "realized": 0}
    names = {"down": -1, "hold": 0, "up": 1}
    pred = live["direction"].map(names).to_numpy()[realized]
    y = y[realized]
    correct = pred == y
    majority = max(float(np.mean(y == c)) for c in CLASSES)
    acc = accuracy_test(correct, majority)
    conf = live["confidence"].to_numpy()[realized]
    return {"served": len(live), "realized": int(realized.sum()), "accuracy": acc["accuracy"],
            "ci_low": acc["ci_low"], "ci_high": acc["ci_high"], "majority_share": majority, "p_value": acc["p_value"],
            "mean_confidence": float(conf.mean()), "confidence_gap": float(conf.mean() - acc["accuracy"]),
            "median_processing_time_ms": float(np.nanmedian(live["processing_time_ms"].to_numpy(dtype=float)))}
