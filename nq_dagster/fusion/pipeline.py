"""Fusion of one source: fused model, ablations and baselines on the same walk-forward rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.predictor import design_matrix
from nq_dagster.fusion.stream import CANDIDATES, N_LAGS
from nq_dagster.fusion.walkforward import ar_forecast, lag_matrix, make_targets, walk_forward


def candidate_columns(features: pd.DataFrame) -> list[str]:
    """The candidate fusion features present in a `features` frame, in the stream's order."""
    return [c for c in CANDIDATES if c in features.columns]


def run_fusion(features: pd.DataFrame, states: np.ndarray, selected: list[str], cfg) -> dict:
    """Walk-forward predictions of the fused model, the two ablations, and AR(p), for rows >= train_min."""
    values = features["value"].to_numpy()
    targets = make_targets(values, cfg.horizon, cfg.hold_band, cfg.feature_window)
    kw = dict(horizon=cfg.horizon, train_min=cfg.train_min, refit_every=cfg.refit_every,
              calibration_fraction=cfg.calibration_fraction)
    sel = features[selected].to_numpy(dtype=float) if selected else np.zeros((len(features), 0))
    last = lag_matrix(values, N_LAGS)  # the recent changes every model sees, as AR(5) does
    X_fused = design_matrix(states, sel, last)
    base = sel.shape[1] + last.shape[1]
    names = [f"reservoir_{i}" for i in range(states.shape[1])] + selected + [f"lag{k}" for k in range(N_LAGS)]
    fused, model = walk_forward(X_fused, targets, columns=names, n_base=base, **kw)
    ablations = {"reservoir_only": walk_forward(np.hstack([states, last]), targets, n_base=last.shape[1], **kw)[0]}
    if selected:
        ablations["patterns_only"] = walk_forward(np.hstack([sel, last]), targets, **kw)[0]
    ar = ar_forecast(values, targets, p=N_LAGS, horizon=cfg.horizon, train_min=cfg.train_min,
                     refit_every=cfg.refit_every)
    return {"targets": targets, "fused": fused, "ablations": ablations, "ar": ar, "model": model}
