"""Fusion of one source: fused model, ablations and baselines on the same walk-forward rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.baselines import run_baselines, season_of
from nq_dagster.fusion.intervals import walk_forward_intervals
from nq_dagster.fusion.stream import CANDIDATES, N_LAGS, seasonal_column
from nq_dagster.fusion.training import design_matrix, live_calibration
from nq_dagster.fusion.walkforward import lag_matrix, make_targets, schedule_for, walk_forward

AR_ORDERS = (1, 2, 4, 8, 16)  # the candidate orders of the linear base stage (on the recent changes)


def candidate_columns(features: pd.DataFrame) -> list[str]:
    """The candidate fusion features present in a `features` frame, in the stream's order."""
    return [c for c in CANDIDATES if c in features.columns]


def base_variants(d: int, n_selected: int, seasonal: bool = False) -> list[np.ndarray]:
    """The linear base stages the fit chooses among (by held-out error), as column indices of a design whose
    last columns are [selected features (n_selected), N_LAGS recent changes, the level, the seasonal change]:
    AR on the changes of each order in AR_ORDERS, with and without the level (which makes it AR on the
    levels), and, where a season was detected, each of those with the seasonal naive forecast as a regressor;
    each with the selected features and without them (plain AR, what a short series often supports best)."""
    lag0 = d - N_LAGS - 2
    out = []
    for sel in [np.arange(lag0 - n_selected, lag0), np.arange(0)] if n_selected else [np.arange(0)]:
        for p in AR_ORDERS:
            for level in (False, True):
                for seas in (False, True) if seasonal else (False,):
                    out.append(
                        np.concatenate(
                            [
                                sel,
                                np.arange(lag0, lag0 + p),
                                [d - 2] if level else [],
                                [d - 1] if seas else [],
                            ]
                        ).astype(np.int64)
                    )
    return out


def run_fusion(
    features: pd.DataFrame, states: np.ndarray, selected: list[str], cfg, source: str = "source"
) -> dict:
    """Walk-forward predictions of the fused model, its ablations and the baselines, for rows >= the
    schedule's train_min (which scales with the series' length: `walkforward.training_schedule`). The design's
    reservoir part is the spiking reservoir's states and the analog reservoir's block
    (`stages.analog_states`), each a candidate stage of its own."""
    from nq_dagster.neuromorphic.stages import analog_states

    values = features["value"].to_numpy()
    analog, analog_final, scaling = analog_states(values, cfg, source)
    sched = schedule_for(len(values), cfg)
    targets = make_targets(values, cfg.horizon, cfg.hold_band, cfg.feature_window)
    kw = dict(
        horizon=cfg.horizon,
        train_min=sched.train_min,
        refit_every=sched.refit_every,
        calibration_fraction=cfg.calibration_fraction,
        warmup=sched.warmup,
    )
    sel = features[selected].to_numpy(dtype=float) if selected else np.zeros((len(features), 0))
    season = season_of(values, sched.train_min, cfg.horizon)  # 0: none
    # recent changes, the level and the seasonal change: the linear part of the design
    last = np.column_stack(
        [lag_matrix(values, N_LAGS, level=True), seasonal_column(values, season, cfg.horizon)]
    )
    R, A = states.shape[1], analog.shape[1]
    X_fused = design_matrix(np.hstack([states, analog]), sel, last)
    base = sel.shape[1] + last.shape[1]
    names = (
        [f"reservoir_{i}" for i in range(R)]
        + [f"analog_{i}" for i in range(A - 2)]
        + ["analog_value", "analog_change"]
        + selected
        + [f"lag{k}" for k in range(N_LAGS)]
        + ["level", "seasonal_change"]
    )
    fused, model = walk_forward(
        X_fused,
        targets,
        columns=names,
        n_base=base,
        base_variants=base_variants(X_fused.shape[1], sel.shape[1], bool(season)),
        rest_groups=[np.arange(R), np.arange(R, R + A)],
        **kw,
    )
    X_res = np.hstack([states, last])
    ablations = {
        "reservoir_only": walk_forward(
            X_res,
            targets,
            n_base=last.shape[1],
            base_variants=base_variants(X_res.shape[1], 0, bool(season)),
            **kw,
        )[0]
    }
    if selected:
        X_pat = np.hstack([sel, last])
        ablations["patterns_only"] = walk_forward(
            X_pat,
            targets,
            n_base=X_pat.shape[1],
            base_variants=base_variants(X_pat.shape[1], sel.shape[1], bool(season)),
            **kw,
        )[0]
    baselines, _ = run_baselines(
        values,
        targets,
        cfg.horizon,
        sched.train_min,
        sched.refit_every,
        sched.warmup,
        cfg.calibration_fraction,
        analog,
        season,
    )
    calibration = live_calibration(model, X_fused, targets, values, cfg.horizon, sched.refit_every)
    return {
        "targets": targets,
        "calibration": calibration,
        # the fused rows' prediction intervals and the conformal state a stream continues (fusion/intervals)
        "intervals": walk_forward_intervals(fused, targets, values, cfg.horizon),
        "analog": {"last": analog[-1].copy(), "final": analog_final, "scaling": scaling},
        "fused": fused,
        "ablations": ablations,
        "baselines": baselines,
        "season": season or None,
        "model": model,
        "schedule": {"train_min": sched.train_min, "refit_every": sched.refit_every, "warmup": sched.warmup},
    }
