"""Statistics on realized outcomes: accuracy with Wilson interval and binomial test, Diebold-Mariano,
Brier score, log loss, expected calibration error and the reliability diagram."""

from __future__ import annotations

import numpy as np
from scipy import stats


def accuracy_test(correct: np.ndarray, p0: float) -> dict:
    """Directional accuracy, its 95 % Wilson interval, and the one-sided binomial test of accuracy > p0."""
    correct = np.asarray(correct, dtype=bool)
    n, k = len(correct), int(correct.sum())
    if n == 0:
        raise ValueError("no predictions to test")
    res = stats.binomtest(k, n, min(max(p0, 1e-9), 1 - 1e-9), alternative="greater")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")  # two-sided interval
    return {
        "n": n,
        "accuracy": k / n,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "p0": p0,
        "p_value": float(res.pvalue),
    }


def diebold_mariano(loss_model: np.ndarray, loss_base: np.ndarray, horizon: int = 1) -> dict:
    """Diebold-Mariano (1995) test with the Harvey, Leybourne and Newbold (1997) small-sample correction.

    d_t = loss_model - loss_base; H1: the model's expected loss is lower (one-sided p-value).
    The long-run variance uses autocovariances up to lag h - 1.
    """
    d = np.asarray(loss_model, float) - np.asarray(loss_base, float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 10:
        raise ValueError("Diebold-Mariano needs at least 10 paired losses")
    dbar = d.mean()
    gamma = [np.mean((d[k:] - dbar) * (d[: n - k] - dbar)) for k in range(horizon)]
    lrv = gamma[0] + 2 * sum(gamma[1:])
    if lrv <= 0:
        return {"dm_stat": 0.0, "p_value": 1.0, "mean_loss_diff": float(dbar)}
    dm = dbar / np.sqrt(lrv / n)
    corr = np.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    stat = dm * corr
    return {
        "dm_stat": float(stat),
        "p_value": float(stats.t.cdf(stat, df=n - 1)),
        "mean_loss_diff": float(dbar),
    }


def brier_score(probs: np.ndarray, y_idx: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of sum_k (p_k - 1[y = k])^2 (0 best, 2 worst)."""
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y_idx)), y_idx] = 1
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def log_loss(probs: np.ndarray, y_idx: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_idx)), y_idx], 1e-12, 1))))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-label confidence (equal-width bins) and the diagram's rows."""
    confidence = np.asarray(confidence, float)
    correct = np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        conf, acc = float(confidence[m].mean()), float(correct[m].mean())
        ece += m.mean() * abs(acc - conf)
        rows.append(
            {
                "bin_low": float(edges[b]),
                "bin_high": float(edges[b + 1]),
                "count": int(m.sum()),
                "mean_confidence": conf,
                "accuracy": acc,
            }
        )
    return float(ece), rows


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> dict:
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    tp = int((flagged & truth).sum())
    return {
        "flagged": int(flagged.sum()),
        "true_anomalies": int(truth.sum()),
        "true_positives": tp,
        "precision": tp / flagged.sum() if flagged.any() else float("nan"),
        "recall": tp / truth.sum() if truth.any() else float("nan"),
    }


def fmt_p(p: float) -> str:
    """ "p = 0.012", or "p < 1e-300" for a p-value that underflowed to 0 in double precision (never
    "p = 0")."""
    return "p < 1e-300" if p == 0 else f"p = {p:.2g}"
