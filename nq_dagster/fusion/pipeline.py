"""Fusion of one source: fused model, ablations and baselines on the same walk-forward rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.baselines import BLOCKS, forecasters, run_baselines, season_of, shifted
from nq_dagster.fusion.intervals import walk_forward_intervals
from nq_dagster.fusion.stream import CANDIDATES, N_LAGS, seasonal_column
from nq_dagster.fusion.training import design_matrix, live_calibration
from nq_dagster.fusion.walkforward import FusionModel, lag_matrix, make_targets, schedule_for, walk_forward

AR_ORDERS = (1, 2, 4, 8, 16)  # the candidate orders of the linear base stage (on the recent changes)


def candidate_columns(features: pd.DataFrame) -> list[str]:
    """The candidate fusion features present in a `features` frame, in the stream's order."""
    return [c for c in CANDIDATES if c in features.columns]


def base_variants(d: int, n_selected: int, season: int = 0, reach: int = N_LAGS) -> list[np.ndarray]:
    """The linear base stages the fit chooses among (by held-out error), as column indices of a design whose
    last columns are [selected features (n_selected), N_LAGS recent changes, the level, the seasonal change]:
    AR on the changes of each order in AR_ORDERS, with and without the level (which makes it AR on the
    levels), and, where a season was detected, each of those with the seasonal naive forecast as a regressor;
    each with the selected features and without them (plain AR, what a short series often supports best).
    Where a season m was detected, also plain AR of order m + 1 (one season back; at most `reach`, the changes
    a stream holds), with and without the level."""
    lag0 = d - N_LAGS - 2
    orders = [p for p in AR_ORDERS if p <= reach]
    out = []
    for sel in [np.arange(lag0 - n_selected, lag0), np.arange(0)] if n_selected else [np.arange(0)]:
        for p in orders:
            for level in (False, True):
                for seas in (False, True) if season else (False,):
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
    long = min(season + 1, reach) if season else 0
    if long > max(orders):
        # one season back: plain AR on the changes, with and without the level (a basis costs rows x order^2:
        # the 8 combinations of the short orders at order 47 made a 10k-row fit several times slower)
        out += [
            np.concatenate([np.arange(lag0, lag0 + long), [d - 2] if level else []]).astype(np.int64)
            for level in (False, True)
        ]
    return out


def max_lag(feature_window: int) -> int:
    """The recent changes a stream holds for the design (its change window is 10 x feature_window - 1)."""
    return min(N_LAGS, 10 * feature_window - 1)


def memoized(fits: dict) -> dict:
    """The same forecasters, each fitted once per train_end: the fused model takes their stages as candidates,
    then the baselines' own walk-forward scores them (`run_baselines`) at the same refit points."""
    out = {}
    for name, fit in fits.items():
        cache: dict = {}

        def once(train_end: int, fit=fit, cache=cache):
            if train_end not in cache:
                cache[train_end] = fit(train_end)
            return cache[train_end]

        out[name] = once
        out[name].cache = cache
    return out


def baseline_candidates(fits: dict, train_end: int, offsets: dict) -> list[tuple[str, list, int]]:
    """The baselines fitted at this refit point as fixed candidates of the fused model: (name, stages within
    the fused design, coefficients); a baseline without an exact stage is left out (and the candidate table
    says so)."""
    out = []
    for name, fit in fits.items():
        model = fit(train_end)[0]
        if model.stages:
            st = model.stages[0]
            k = int(np.sum(np.abs(st.coef) > 1e-9 * max(float(np.abs(st.coef).max()), 1e-300))) + 1
            out.append((name, [shifted(st, offsets[BLOCKS[name]])], k))
    return out


def candidate_table(fits: dict, fused: pd.DataFrame) -> dict:
    """What the fused model chose among: per baseline, the share of refits where it was a candidate (it has an
    exact stage in the design); and how many refits chose each candidate."""
    per_refit = pd.Series(fused.attrs.get("candidates", {}), dtype=object)
    return {
        "baseline_candidate_share": {
            name: sum(bool(m.stages) for m, _ in fit.cache.values()) / max(len(fit.cache), 1)
            for name, fit in fits.items()
        },
        "chosen": {str(k): int(v) for k, v in per_refit.value_counts().items()},
    }


def incumbent_predictions(
    model: FusionModel,
    names: list[str],
    X: np.ndarray,
    features: pd.DataFrame,
    values: np.ndarray,
    season: int,
    targets: pd.DataFrame,
    horizon: int,
) -> dict | None:
    """Another model version's predicted change and direction probabilities on every row of this run, its
    design rebuilt by column name from this run's design (reservoir states, lags, level), the `features`
    frame (its selected features) and its own season (the seasonal column); None where a column cannot be
    rebuilt. The caller checks that the columns mean the same (same design and configuration:
    `validation.promotion.comparable`). Its probabilities use its own stored error scale."""
    index = {c: i for i, c in enumerate(names)}
    cols = []
    for c in model.columns:
        if c == "seasonal_change":
            cols.append(seasonal_column(values, season, horizon))
        elif c in index:
            cols.append(X[:, index[c]])
        elif c in features.columns:
            cols.append(features[c].to_numpy(dtype=float))
        else:
            return None
    probs, chg = model.predict(np.column_stack(cols), targets["band"].to_numpy())
    return {"pred_change": chg, "probs": probs}


def run_fusion(
    features: pd.DataFrame,
    states: np.ndarray,
    selected: list[str],
    cfg,
    source: str = "source",
    incumbent: tuple[FusionModel, int] | None = None,
) -> dict:
    """Walk-forward predictions of the fused model, its ablations and the baselines, for rows >= the
    schedule's train_min (which scales with the series' length: `walkforward.training_schedule`). The design's
    reservoir part is the spiking reservoir's states and the analog reservoir's block
    (`stages.analog_states`), each a candidate stage of its own. `incumbent`: the served version's model
    and season, predicted on the same rows for the promotion gate (`incumbent_predictions`)."""
    from nq_dagster.neuromorphic.stages import analog_states

    values = features["value"].to_numpy()
    analog, analog_final, scaling = analog_states(values, cfg, source)
    sched = schedule_for(len(values), cfg)
    targets = make_targets(
        values,
        cfg.horizon,
        cfg.hold_band,
        cfg.feature_window,
        features["timestamp"].to_numpy() if "timestamp" in features.columns else None,
    )
    kw = dict(
        horizon=cfg.horizon,
        train_min=sched.train_min,
        refit_every=sched.refit_every,
        calibration_fraction=cfg.calibration_fraction,
        warmup=sched.warmup,
    )
    sel = features[selected].to_numpy(dtype=float) if selected else np.zeros((len(features), 0))
    season = season_of(values, sched.train_min, cfg.horizon)  # 0: none
    reach = max_lag(cfg.feature_window)
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
    # the baselines, fitted once per refit point: scored by the report and candidates of the fused model
    fits = memoized(
        forecasters(
            values,
            targets,
            cfg.horizon,
            sched.train_min,
            sched.warmup,
            cfg.calibration_fraction,
            analog,
            season,
            reach,
        )
    )
    offsets = {"linear": X_fused.shape[1] - last.shape[1], "analog": R}
    # the fused walk-forward and its ablations fit the same base stages (selected features, linear block) on
    # the same rows: each computed once (`fit_model`'s `shared`), columns known by these ids
    bases: dict = {}
    ids_res = [("reservoir", i) for i in range(R)]
    ids_sel = [("selected", c) for c in selected]
    ids_last = [("linear", k) for k in range(last.shape[1])]
    fused, model = walk_forward(
        X_fused,
        targets,
        columns=names,
        n_base=base,
        base_variants=base_variants(X_fused.shape[1], sel.shape[1], season, reach),
        rest_groups=[np.arange(R), np.arange(R, R + A)],
        group_names=["spiking", "analog"],
        extra=lambda train_end: baseline_candidates(fits, train_end, offsets),
        shared=(bases, ids_res + [("analog", i) for i in range(A)] + ids_sel + ids_last),
        **kw,
    )
    X_res = np.hstack([states, last])
    ablations = {
        "reservoir_only": walk_forward(
            X_res,
            targets,
            n_base=last.shape[1],
            base_variants=base_variants(X_res.shape[1], 0, season, reach),
            shared=(bases, ids_res + ids_last),
            **kw,
        )[0]
    }
    if selected:
        X_pat = np.hstack([sel, last])
        ablations["patterns_only"] = walk_forward(
            X_pat,
            targets,
            n_base=X_pat.shape[1],
            base_variants=base_variants(X_pat.shape[1], sel.shape[1], season, reach),
            shared=(bases, ids_sel + ids_last),
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
        fits,
    )
    calibration = live_calibration(model, X_fused, targets, values, cfg.horizon, sched.refit_every)
    inc = None
    if incumbent is not None:
        inc = incumbent_predictions(
            incumbent[0], names, X_fused, features, values, incumbent[1], targets, cfg.horizon
        )
    return {
        "incumbent": inc,
        "candidates": candidate_table(fits, fused),
        "targets": targets,
        "calibration": calibration,
        # the fused rows' prediction intervals and the conformal state a stream continues (fusion/intervals)
        "intervals": walk_forward_intervals(fused, targets, values, cfg.horizon, features.get("timestamp")),
        "analog": {"last": analog[-1].copy(), "final": analog_final, "scaling": scaling},
        "fused": fused,
        "ablations": ablations,
        "baselines": baselines,
        "season": season or None,
        "model": model,
        "schedule": {"train_min": sched.train_min, "refit_every": sched.refit_every, "warmup": sched.warmup},
    }
