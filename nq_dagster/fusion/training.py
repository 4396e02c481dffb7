"""What training hands to streaming: the fused model's design matrix, the calibration state after the last
training row, the realized accuracy per confidence bin, and the `ModelVersion` built from a walk-forward fit.
Training (fusion/pipeline.py, the fusion assets) imports this module and fusion/model.py, never the serving
module (fusion/predictor.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.config import PipelineConfig
from nq_dagster.fusion.model import DESIGN_VERSION, LiveCalibration, ModelVersion
from nq_dagster.fusion.ticks import to_ns
from nq_dagster.fusion.walkforward import (
    RECAL_WINDOW,
    FusionModel,
    median_spacing_ms,
    realized_rows,
    recal_every,
)

CONFIDENCE_EDGES = (1 / 3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0 + 1e-12)


def reliability_table(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Accuracy the walk-forward predictions actually achieved in each confidence bin (realized rows only)."""
    out = []
    for lo, hi in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:], strict=True):
        m = (confidence >= lo) & (confidence < hi)
        out.append(
            {
                "confidence_bin": [round(lo, 4), round(min(hi, 1.0), 4)],
                "predictions": int(m.sum()),
                "observed_accuracy": float(correct[m].mean()) if m.any() else None,
            }
        )
    return out


def design_matrix(states: np.ndarray, selected: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """The fused model's design: reservoir states, the selected candidate features, the recent changes."""
    return np.hstack(
        [np.asarray(states, dtype=float), np.asarray(selected, dtype=float), np.asarray(lags, dtype=float)]
    )


def live_calibration(
    model: FusionModel,
    X: np.ndarray,
    targets: pd.DataFrame,
    values: np.ndarray,
    horizon: int,
    refit_every: int,
) -> LiveCalibration:
    """The calibration state after training's last row, for the model `walk_forward` returned."""
    T = len(values)
    t0 = model.train_end + horizon
    window = min(model.train_end + 1 - model.fit_end, RECAL_WINDOW)
    lo = max(model.fit_end, T - window - horizon)
    rows = np.arange(lo, T)
    return LiveCalibration(
        t0,
        recal_every(refit_every),
        window,
        horizon,
        model.fit_end,
        lo,
        model.predict_change(X[rows]),
        targets["band"].to_numpy()[rows].astype(float),
        np.asarray(values, dtype=float)[rows],
        float(model.scale),
        model.scale_per_band,
        float(model.mix),
        model.base_rate,
    )


def model_version_from_fit(
    source: str,
    cfg: PipelineConfig,
    version: str,
    fusion: dict,
    selected: list[str],
    quantum: dict,
    timestamps: np.ndarray,
    fit_seconds: float,
) -> ModelVersion:
    """The model version training hands to streaming: the last walk-forward model and what it achieved."""
    fused, targets = fusion["fused"], fusion["targets"]
    y = targets["direction"].to_numpy()[fused["row"].to_numpy()]
    ok = realized_rows(targets, fused["row"].to_numpy())
    reliability = reliability_table(
        fused["confidence"].to_numpy()[ok], fused["direction"].to_numpy()[ok] == y[ok]
    )
    ts = to_ns(timestamps)
    step_ms = median_spacing_ms(ts)  # the spacing the horizon gaps of training's targets are measured in
    return ModelVersion(
        source=source,
        model_version=version,
        config=cfg.as_dict(),
        model=fusion["model"],
        selected=list(selected),
        quantum=quantum,
        reliability=reliability,
        train_end_ns=int(ts[fusion["model"].train_end]),
        step_ms=step_ms,
        fit_seconds=float(fit_seconds),
        trained_rows=len(ts),
        created_at=pd.Timestamp.now(tz="UTC").isoformat(),
        design=DESIGN_VERSION,
    )
