"""The promotion gate: a newly trained model version replaces the served one only if it is not significantly
worse on realized outcomes that neither trained on.

Training (`nq run`, the daily automation) fits a new version; the version currently served (training's last
promoted `serving_state`) predicts the same rows through its own coefficients (`fusion.pipeline.run_fusion`
with `incumbent`). The rows compared are the new walk-forward rows after the current version's last training
row (so the current version never saw them, and every new prediction there was made by a model trained only on
earlier rows), realized only (a row whose horizon tick came after a gap in the feed is not realized, the
server's rule: `walkforward.make_targets`; counted as `unrealized_gap`). Two one-sided tests on those same
rows, Holm-corrected: exact McNemar on the direction hits (is the current version more accurate?) and
Diebold-Mariano on the squared error of the change (is its error lower?). The new version is promoted unless
one of them is significant at ALPHA; else it is kept as a rejected candidate with the figures and the current
version stays served.

When there is nothing to compare (no current version, one of another design or configuration, whose columns
mean other things, or fewer than MIN_ROWS such rows: a retrain on the same data), the new version is promoted
and the decision says why: a configuration change is the user's choice, and a gate that blocks every first
training would serve nothing.

Why these rows are the shadow run (issue 30 asks for "shadow on the live ticks, or the most recent realized
rows it did not train on"; this is the second): the rows after the served version's last training row are the
ticks the served version met live (or, for a source fed by files, the rows that arrived since), and both
versions predict them as a stream would: the served one by its stored coefficients on the same design columns,
the new one by its walk-forward, each of its predictions by a model fitted only on rows realized before it. So
the comparison is the shadow's, on realized outcomes neither version fitted, decided at training time instead
of after days of running a candidate beside the served model in the server; a live shadow would add the
server's own intervals of time without new information (the same rows, the same tests) and a second model per
source in its memory. What the server served live is scored by the report's live section. The decision states
the rows it compared (`compared_rows`: how many, their first and last time, the rows left unrealized by gaps),
shown by `nq models` and in the Dagster metadata (`promotion_figures`).

The decisions of a source are kept in its `model_versions` artifact (`record`, read by `nq models`, the
server's watcher and the `served_model_promoted` check); the rejected candidate's serving state in
`candidate_state`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.walkforward import CLASSES, UNREALIZED, realized_rows
from nq_dagster.validation.evaluate import holm, mcnemar_greater
from nq_dagster.validation.stats import diebold_mariano

ALPHA = 0.05
MIN_ROWS = 30  # fewer compared rows: no test (McNemar and Diebold-Mariano say little on a few dozen)
REGISTRY = "model_versions"  # artifact name: {"versions": [decision, ...]} per source, oldest first
CANDIDATE = "candidate_state"  # artifact name: the last rejected version's serving state


def comparable(current, cfg: dict, design: int) -> str:
    """Why the current model version (a `ModelVersion`) cannot predict this run's rows, or "" if it can: same
    design and the same configuration apart from its version label (the reservoirs and encoders then compute
    the same columns)."""
    if current is None:
        return "no version is served yet"
    if current.design != design:
        return f"the served version has design {current.design}, this training {design}"
    a = {k: v for k, v in current.config.items() if k != "version"}
    b = {k: v for k, v in cfg.items() if k != "version"}
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return f"the configuration changed ({', '.join(changed)})" if changed else ""


def decide(fusion: dict, current, why_not: str, timestamps: np.ndarray, new_version: str) -> dict:
    """The gate's decision for the new version (`fusion`: run_fusion's output, with `incumbent` when the
    current version predicted the rows). Returns a plain dict: status (promoted / rejected), reason, the
    versions, the rows compared and both versions' accuracy, squared error and one-sided p-values."""
    out = {
        "model_version": new_version,
        "current_version": current.model_version if current is not None else None,
        "status": "promoted",
        "rows": 0,
        "decided_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    inc = fusion.get("incumbent")
    if why_not or inc is None:
        return {
            **out,
            "reason": f"promoted without a test: {why_not or 'the current version cannot predict'}",
        }
    ts = pd.to_datetime(pd.Series(timestamps), utc=True).to_numpy("datetime64[ns]").view(np.int64)
    f = fusion["fused"]
    rows = f["row"].to_numpy()
    y_dir = fusion["targets"]["direction"].to_numpy()[rows]
    after = ts[rows] > current.train_end_ns
    # realized only: neither beyond the data nor a gap (the horizon tick came too late: `make_targets`)
    keep = after & realized_rows(fusion["targets"], rows)
    n = int(keep.sum())
    out["unrealized_gap"] = int((after & ~keep & (y_dir != UNREALIZED)).sum())
    if n < MIN_ROWS:
        return {
            **out,
            "rows": n,
            "reason": f"promoted without a test: {n} realized rows after the current version's training "
            f"(at least {MIN_ROWS} are needed to test)",
        }
    rows, y = rows[keep], y_dir[keep]
    y_chg = fusion["targets"]["change"].to_numpy()[rows]
    new_ok = f["direction"].to_numpy()[keep] == y
    new_sq = (f["pred_change"].to_numpy()[keep] - y_chg) ** 2
    cur_ok = CLASSES[np.asarray(inc["probs"])[rows].argmax(axis=1)] == y
    cur_sq = (np.asarray(inc["pred_change"])[rows] - y_chg) ** 2
    p_acc = mcnemar_greater(cur_ok, new_ok)  # H1: the current version is more accurate
    p_mse = diebold_mariano(cur_sq, new_sq)["p_value"]  # H1: the current version's squared error is lower
    p_acc_h, p_mse_h = holm([p_acc, p_mse])
    worse = [what for what, p in (("less accurate", p_acc_h), ("higher squared error", p_mse_h)) if p < ALPHA]
    first, last = (str(pd.Timestamp(int(ts[r]), tz="UTC")) for r in (rows[0], rows[-1]))
    figures = {
        "rows": n,
        "first_row_time": first,
        "last_row_time": last,
        "compared_rows": (
            f"{n} realized walk-forward rows from {first} to {last}, after the current version's last "
            f"training row ({pd.Timestamp(int(current.train_end_ns), tz='UTC')}); {out['unrealized_gap']} "
            "left out as gaps; the new version's predictions each by a model fitted only on earlier rows, "
            "the current version's by its stored coefficients"
        ),
        "accuracy_new": float(new_ok.mean()),
        "accuracy_current": float(cur_ok.mean()),
        "mse_new": float(new_sq.mean()),
        "mse_current": float(cur_sq.mean()),
        "p_current_more_accurate": float(p_acc),
        "p_current_lower_mse": float(p_mse),
        "p_holm_accuracy": float(p_acc_h),
        "p_holm_mse": float(p_mse_h),
    }
    if worse:
        reason = (
            f"rejected: significantly {' and '.join(worse)} than the current version "
            f"{out['current_version']} on {n} realized rows neither trained on (Holm p = "
            f"{min(p_acc_h, p_mse_h):.3g} < {ALPHA})"
        )
        return {**out, **figures, "status": "rejected", "reason": reason}
    reason = (
        f"promoted: not significantly worse than the current version on {n} realized rows neither trained "
        f"on (accuracy {new_ok.mean():.3f} vs {cur_ok.mean():.3f}, Holm p = {p_acc_h:.3g}; squared error "
        f"Holm p = {p_mse_h:.3g})"
    )
    return {**out, **figures, "reason": reason}


def history(wh, source: str) -> list[dict]:
    """The source's recorded decisions, oldest first ([] before the first)."""
    if not wh.has_artifact(REGISTRY, source):
        return []
    return list(wh.load_artifact(REGISTRY, source).get("versions", []))


def record(wh, source: str, decision: dict) -> None:
    """Append a decision to the source's registry (training of a source runs one at a time)."""
    wh.save_artifact(REGISTRY, source, {"versions": [*history(wh, source), dict(decision)]})


def status_of(wh, source: str, version: str) -> str | None:
    """promoted / rejected for a recorded version, None for one the registry does not know (trained before
    the gate existed)."""
    for d in reversed(history(wh, source)):
        if d.get("model_version") == version:
            return d.get("status")
    return None


def versions_table(wh, sources: list[str]) -> pd.DataFrame:
    """Every recorded version of these sources with its status: current (the one served now), promoted (served
    before), rejected; and the gate's figures."""
    rows = []
    for s in sources:
        served = None
        if wh.has_artifact("serving_state", s):
            try:
                served = wh.load_artifact("serving_state", s).model.model_version
            except Exception:  # noqa: BLE001 - a broken artifact shows as not served
                served = None
        for d in history(wh, s):
            status = d.get("status")
            if status == "promoted":
                status = "current" if d.get("model_version") == served else "promoted"
            rows.append(
                {
                    "source": s,
                    "model_version": d.get("model_version"),
                    "status": status,
                    "decided_at": d.get("decided_at"),
                    "compared_with": d.get("current_version"),
                    "rows": d.get("rows", 0),
                    "first_row_time": d.get("first_row_time"),
                    "last_row_time": d.get("last_row_time"),
                    "unrealized_gap": d.get("unrealized_gap"),
                    "accuracy_new": d.get("accuracy_new"),
                    "accuracy_current": d.get("accuracy_current"),
                    "p_holm_accuracy": d.get("p_holm_accuracy"),
                    "p_holm_mse": d.get("p_holm_mse"),
                    "reason": d.get("reason"),
                }
            )
    return pd.DataFrame(rows)
