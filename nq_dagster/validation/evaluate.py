"""Evaluation of one source's walk-forward predictions on realized outcomes, and the validation score.

One scoring rule for every model (the fused model, its ablations, the baselines): each forecasts the change,
turns it into class probabilities with its own error scale (and base-rate mix) calibrated on held-out rows,
and calls the direction its most likely class (`fusion.walkforward.walk_forward_forecaster`). The score never
rewards what the record does not claim: the record claims a direction, so the score is 0 unless the model is
significantly more accurate in direction than both the best constant predictor (binomial test) and the best
baseline (McNemar), and significantly worse than no baseline in accuracy or squared error (Holm-corrected over
every baseline). A model that only has a lower squared error is reported as "skill in squared error only",
with score 0. `SCORE_DEFINITION` is printed in every report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from nq_dagster.fusion.record import within_horizon
from nq_dagster.fusion.walkforward import CLASSES, UNREALIZED, realized_rows
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
LATE_FRACTION = 0.3
SCORE_DEFINITION = (
    "Every model (fused, ablations, baselines) is scored by one rule: its direction is the most likely "
    "class of its "
    "own probabilities (a Normal error around its forecast change, the scale calibrated by log loss on rows "
    "it did "
    "not fit and refitted between refits, mixed with those rows' class frequencies by a weight fitted by "
    "the same "
    "log loss). Tests: accuracy above the best constant predictor (one-sided binomial), "
    "accuracy above the best baseline (one-sided exact McNemar on the same rows), squared error below the "
    "baseline "
    "with the lowest squared error (one-sided Diebold-Mariano), Brier score below the training-frequency "
    "forecast "
    "(one-sided Diebold-Mariano on per-row Brier losses); their p-values are Holm-corrected together at "
    "0.05. "
    "The model has skill when it is more accurate in direction than the best constant predictor and than "
    "the best "
    "baseline after correction, and no baseline is significantly more accurate or of lower squared error "
    "than it "
    "(one-sided McNemar and Diebold-Mariano against every baseline, Holm-corrected together at 0.05). A "
    "model "
    'that beats the baselines in squared error only is reported as "skill in squared error only" with score '
    "0: "
    'the record claims a direction. Otherwise the score is 0 and the verdict says "no skill" with the '
    "reasons. "
    "With skill, the score is 100 x the share of the counted criteria that pass; calibration criteria: ECE "
    f"<= {ECE_MAX} "
    f"over all held-out rows and over the last {LATE_FRACTION:.0%}; the ablation criterion (fused accuracy "
    "at least "
    "that of every ablation) counts only when an ablation's directions differ from the fused model's."
)


def mcnemar_greater(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """One-sided exact McNemar test that model a is right more often than model b on the same rows: the
    discordant pairs are Binomial(b + c, 1/2) under equal accuracy. 1.0 when there are none."""
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the given order."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def evaluate(fusion: dict, anomaly_truth: np.ndarray | None = None) -> dict:
    targets, fused = fusion["targets"], fusion["fused"]
    rows = fused["row"].to_numpy()
    y_dir = targets["direction"].to_numpy()[rows]
    y_chg = targets["change"].to_numpy()[rows]
    # realized: the horizon tick is in the data and came within the horizon's time (not after a gap in the
    # feed: `walkforward.make_targets`, the server's rule); a gap row is counted, never scored
    realized = realized_rows(targets, rows)
    unrealized_gap = int(np.sum(~realized & (y_dir != UNREALIZED)))
    f = fused.loc[realized]
    rows, y_dir, y_chg = rows[realized], y_dir[realized], y_chg[realized]
    correct = f["direction"].to_numpy() == y_dir
    class_share = {int(c): float(np.mean(y_dir == c)) for c in CLASSES}
    acc = accuracy_test(correct, max(class_share.values()))
    P = f[["p_down", "p_hold", "p_up"]].to_numpy()
    y_idx = np.searchsorted(CLASSES, y_dir)
    conf = f["confidence"].to_numpy()
    ece, diagram = reliability(conf, correct)
    late = np.arange(len(rows)) >= int(len(rows) * (1 - LATE_FRACTION))
    ece_late, _ = reliability(conf[late], correct[late])
    err_model = (f["pred_change"].to_numpy() - y_chg) ** 2
    first = np.arange(int(f["train_end"].min()) + 1)
    train_dirs = targets["direction"].to_numpy()[first[realized_rows(targets, first)]]

    base_rows, base_dirs = [], {}
    for name, b in fusion["baselines"].items():
        b = b.set_index("row").loc[rows]
        d, chg = b["direction"].to_numpy(), b["pred_change"].to_numpy()
        ok_b = d == y_dir
        base_dirs[name] = d
        dm = diebold_mariano(err_model, (chg - y_chg) ** 2)
        dm_rev = diebold_mariano((chg - y_chg) ** 2, err_model)
        base_rows.append(
            {
                "baseline": name,
                "accuracy": float(ok_b.mean()),
                "mse": float(np.mean((chg - y_chg) ** 2)),
                "ece": reliability(b["confidence"].to_numpy(), ok_b)[0],
                "p_model_more_accurate": mcnemar_greater(correct, ok_b),
                "p_baseline_more_accurate": mcnemar_greater(ok_b, correct),
                "p_dm_model_lower_mse": dm["p_value"],
                "p_dm_baseline_lower_mse": dm_rev["p_value"],
            }
        )
    base_df = pd.DataFrame(base_rows)
    by_name = base_df.set_index("baseline")
    best_acc = by_name["accuracy"].idxmax()
    best_mse = by_name["mse"].idxmin()

    abl_rows = [
        {"model": "fused", "accuracy": acc["accuracy"], "mse": float(err_model.mean()), "differs": False}
    ]
    for name, a in fusion["ablations"].items():
        a = a.set_index("row").loc[rows]
        d = a["direction"].to_numpy()
        abl_rows.append(
            {
                "model": name,
                "accuracy": float(np.mean(d == y_dir)),
                "mse": float(np.mean((a["pred_change"].to_numpy() - y_chg) ** 2)),
                "differs": bool(np.any(d != f["direction"].to_numpy())),
            }
        )
    abl_df = pd.DataFrame(abl_rows)
    vol = targets["volatility"].to_numpy()[rows]
    q = np.quantile(vol, [1 / 3, 2 / 3])
    regime = np.where(vol <= q[0], "low", np.where(vol <= q[1], "mid", "high"))
    regime_df = (
        pd.DataFrame({"regime": regime, "correct": correct})
        .groupby("regime")["correct"]
        .agg(["mean", "size"])
    )
    regime_df = regime_df.rename(columns={"mean": "accuracy", "size": "n"}).reset_index()
    clim = np.tile([class_share_train(train_dirs, c) for c in CLASSES], (len(rows), 1))
    brier, brier_clim = brier_score(P, y_idx), brier_score(clim, y_idx)
    onehot = np.eye(3)[y_idx]
    brier_dm = diebold_mariano(np.sum((P - onehot) ** 2, 1), np.sum((clim - onehot) ** 2, 1))

    tests = [
        (
            "accuracy above the best constant predictor (binomial)",
            acc["p_value"],
            f"acc {acc['accuracy']:.3f} vs {acc['p0']:.3f}",
        ),
        (
            f"accuracy above the best baseline, {best_acc} (McNemar)",
            float(by_name.loc[best_acc, "p_model_more_accurate"]),
            f"acc {acc['accuracy']:.3f} vs {by_name.loc[best_acc, 'accuracy']:.3f}",
        ),
        (
            f"squared error below the best baseline, {best_mse} (Diebold-Mariano)",
            float(by_name.loc[best_mse, "p_dm_model_lower_mse"]),
            f"mse {err_model.mean():.4g} vs {by_name.loc[best_mse, 'mse']:.4g}",
        ),
        (
            "Brier score below the training-frequency forecast (Diebold-Mariano)",
            brier_dm["p_value"],
            f"{brier:.3f} vs {brier_clim:.3f}",
        ),
    ]
    adj = holm([t[1] for t in tests])
    passed_tests = [a < ALPHA for a in adj]
    # never significantly worse than a baseline the report computes, in what the record claims (direction) or
    # in squared error: every baseline's one-sided tests against the model, Holm-corrected together
    worse_p = holm(list(base_df["p_baseline_more_accurate"]) + list(base_df["p_dm_baseline_lower_mse"]))
    nb = len(base_df)
    base_df["p_holm_baseline_more_accurate"] = worse_p[:nb]
    base_df["p_holm_baseline_lower_mse"] = worse_p[nb:]
    worse_acc = [n for n, p in zip(base_df["baseline"], worse_p[:nb], strict=True) if p < ALPHA]
    worse_mse = [n for n, p in zip(base_df["baseline"], worse_p[nb:], strict=True) if p < ALPHA]
    never_worse = not worse_acc and not worse_mse
    skill = passed_tests[0] and passed_tests[1] and never_worse
    mse_only = not skill and passed_tests[0] and passed_tests[2] and never_worse
    crit = [
        {
            "criterion": t[0],
            "p_value": t[1],
            "p_holm": a,
            "passed": ok,
            "counted": True,
            "figure": f"{t[2]}, {fmt_p(t[1])} (Holm {fmt_p(a)})",
        }
        for t, a, ok in zip(tests, adj, passed_tests, strict=True)
    ]
    crit.append(
        {
            "criterion": f"expected calibration error <= {ECE_MAX} (all held-out rows)",
            "p_value": np.nan,
            "p_holm": np.nan,
            "passed": ece <= ECE_MAX,
            "counted": True,
            "figure": f"ECE = {ece:.3f}",
        }
    )
    crit.append(
        {
            "criterion": f"expected calibration error <= {ECE_MAX} (last {LATE_FRACTION:.0%})",
            "p_value": np.nan,
            "p_holm": np.nan,
            "passed": ece_late <= ECE_MAX,
            "counted": True,
            "figure": f"ECE = {ece_late:.3f}",
        }
    )
    differing = abl_df.iloc[1:][abl_df.iloc[1:]["differs"]]
    crit.append(
        {
            "criterion": "fused accuracy at least that of every ablation (counted when they differ)",
            "p_value": np.nan,
            "p_holm": np.nan,
            "passed": bool(len(differing) == 0 or acc["accuracy"] >= differing["accuracy"].max() - 1e-12),
            "counted": bool(len(differing)),
            "figure": ", ".join(
                f"{m} {a:.3f}" for m, a in zip(abl_df["model"], abl_df["accuracy"], strict=True)
            )
            + ("" if len(differing) else " (identical directions: not counted)"),
        }
    )
    crit_df = pd.DataFrame(crit)
    counted = crit_df[crit_df["counted"]]
    reasons = []
    if not passed_tests[0]:
        reasons.append(
            f"accuracy {acc['accuracy']:.3f} is not significantly above the best constant predictor "
            f"({acc['p0']:.3f}; Holm {fmt_p(adj[0])})"
        )
    if not passed_tests[1]:
        reasons.append(
            f"not significantly more accurate than the best baseline, {best_acc} (accuracy "
            f"{acc['accuracy']:.3f} vs {by_name.loc[best_acc, 'accuracy']:.3f}, Holm {fmt_p(adj[1])})"
        )
    for names, what in ((worse_acc, "more accurate in direction"), (worse_mse, "of lower squared error")):
        if names:
            reasons.append(
                f"significantly worse than {', '.join(names)} (the baseline is {what}, Holm-corrected)"
            )
    if skill:
        score, verdict = round(100.0 * counted["passed"].mean(), 1), "skill"
    elif mse_only:
        score = 0.0
        verdict = (
            f"skill in squared error only (below {best_mse}, Holm {fmt_p(adj[2])}), not in the direction "
            "the record states: " + "; ".join(reasons)
        )
    else:
        score, verdict = 0.0, "no skill: " + "; ".join(reasons)
    worse = base_df[base_df["baseline"].isin(set(worse_acc) | set(worse_mse))]
    metrics = {
        "predictions": int(len(rows)),
        "unrealized_gap": unrealized_gap,
        "accuracy": acc["accuracy"],
        "acc_ci_low": acc["ci_low"],
        "acc_ci_high": acc["ci_high"],
        "p_binom": acc["p_value"],
        "majority_share": acc["p0"],
        "best_baseline": str(best_acc),
        "best_baseline_acc": float(by_name.loc[best_acc, "accuracy"]),
        "p_mcnemar_best": float(by_name.loc[best_acc, "p_model_more_accurate"]),
        "p_dm_best": float(by_name.loc[best_mse, "p_dm_model_lower_mse"]),
        "best_mse_baseline": str(best_mse),
        "significantly_worse_than": ",".join(worse["baseline"]) or "none",
        **{f"p_dm_{n}": float(by_name.loc[n, "p_dm_model_lower_mse"]) for n in by_name.index},
        "brier": brier,
        "brier_climatology": brier_clim,
        "log_loss": log_loss(P, y_idx),
        "ece": ece,
        "ece_late": ece_late,
        "mean_confidence": float(conf.mean()),
        "skill": bool(skill),
        "verdict": verdict,
        "score": score,
        "season": fusion.get("season") or 0,
    }
    out = {
        "metrics": metrics,
        "baselines": base_df,
        "ablations": abl_df,
        "regimes": regime_df,
        "criteria": crit_df,
        "reliability": pd.DataFrame(diagram),
        "rows": rows,
        "correct": correct,
        "y_dir": y_dir,
        "pred_dir": f["direction"].to_numpy(),
        "baseline_dirs": base_dirs,
    }
    if anomaly_truth is not None:
        # a point is flagged when its realized change is a > 4 sigma surprise to the forecast of the model
        # that made it (its own error scale, fitted before the row)
        z = np.abs(y_chg - f["pred_change"].to_numpy()) / np.maximum(f["error_scale"].to_numpy(), 1e-12)
        pts = rows + 1  # the change from row r lands on point r + 1
        ok = pts < len(anomaly_truth)
        pr = precision_recall((z > 4)[ok], np.asarray(anomaly_truth, bool)[pts[ok]])
        out["anomalies"] = pr
        out["anomaly_points"] = {
            "flagged": pts[ok][(z > 4)[ok]],
            "recorded": np.nonzero(np.asarray(anomaly_truth, bool))[0],
        }
        metrics["anomaly_precision"], metrics["anomaly_recall"] = pr["precision"], pr["recall"]
    return out


def class_share_train(train_dirs: np.ndarray, c: int) -> float:
    d = train_dirs[train_dirs != UNREALIZED]
    return (np.sum(d == c) + 1) / (len(d) + 3)


def evaluate_live(
    live: pd.DataFrame, timestamps: pd.Series, targets: pd.DataFrame, horizon: int = 1
) -> dict | None:
    """What was served live (the streaming job's and the prediction server's records in `predictions`), scored
    on the outcomes that have been realized since: accuracy with its 95 % interval and the test against the
    majority class of the same rows, and how the stated confidence compares with the accuracy achieved.
    A prediction whose outcome row (`horizon` rows later) came too long after it (`record.within_horizon`) is
    unrealized (a gap): counted, left out of the accuracy. None when nothing was served live."""
    if live is None or not len(live):
        return None
    ts = pd.to_datetime(timestamps, utc=True).to_numpy()
    lt = pd.to_datetime(live["timestamp"], utc=True).to_numpy()
    idx = np.searchsorted(ts, lt)
    ok = idx < len(ts)
    ok[ok] = ts[idx[ok]] == lt[ok]
    y = np.full(len(live), -9)
    y[ok] = targets["direction"].to_numpy()[idx[ok]]
    at = np.where(ok, idx + horizon, 0)
    reached = ok & (at < len(ts))
    gap_ms = np.zeros(len(live))
    gap_ms[reached] = (ts[at[reached]] - lt[reached]) / np.timedelta64(1, "ms")
    late = reached & ~within_horizon(gap_ms, live["time_horizon_ms"].to_numpy(dtype=float))
    y[late] = -9
    realized = y != -9
    if not realized.any():
        return {"served": len(live), "realized": 0, "unrealized_gap": int(late.sum())}
    names = {"down": -1, "hold": 0, "up": 1}
    pred = live["direction"].map(names).to_numpy()[realized]
    y = y[realized]
    correct = pred == y
    majority = max(float(np.mean(y == c)) for c in CLASSES)
    acc = accuracy_test(correct, majority)
    conf = live["confidence"].to_numpy()[realized]
    return {
        "served": len(live),
        "realized": int(realized.sum()),
        "unrealized_gap": int(late.sum()),
        "accuracy": acc["accuracy"],
        "ci_low": acc["ci_low"],
        "ci_high": acc["ci_high"],
        "majority_share": majority,
        "p_value": acc["p_value"],
        "mean_confidence": float(conf.mean()),
        "confidence_gap": float(conf.mean() - acc["accuracy"]),
        "median_processing_time_ms": float(np.nanmedian(live["processing_time_ms"].to_numpy(dtype=float))),
    }
