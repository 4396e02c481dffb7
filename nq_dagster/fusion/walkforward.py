"""Walk-forward fusion of reservoir states and selected features into calibrated predictions.

Targets (horizon h steps): change_t = x_{t+h} - x_t; direction up / down / hold,
hold when |change_t| < hold_band * sd_t * sqrt(h), sd_t the std of the last
`vol_window` one-step changes known at t.

Walk-forward with an expanding window: at each refit point T0 (every
`refit_every` steps from `train_min`), a model is trained on the rows whose
target was realized by T0 (t + h <= T0) and predicts rows T0 .. T0 + refit_every - 1.
The model is a ridge regression of the change (penalty by leave-one-out CV);
direction probabilities follow from a Normal error around the predicted change,
whose scale (a constant, or proportional to the recent volatility: whichever
fits better) is fitted by log loss on the most recent `calibration_fraction` of
the training rows, held out from the regression fit, so
a confidence is always calibrated on data the model did not fit. Each
prediction records `train_end`, the last row whose target the model saw, and
`train_end + h <= t` is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import ndtr
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from nq_dagster.artifacts import register

CLASSES = np.array([-1, 0, 1])  # down, hold, up
CLASS_NAMES = {-1: "down", 0: "hold", 1: "up"}
ALPHAS = np.logspace(-9, 5, 15)


def make_targets(values: np.ndarray, horizon: int = 1, hold_band: float = 0.1, vol_window: int = 50
                 ) -> pd.DataFrame:
    v = np.asarray(values, dtype=float)
    T = len(v)
    change = np.full(T, np.nan)
    change[: T - horizon] = v[horizon:] - v[:-horizon]
    step = pd.Series(np.diff(v, prepend=v[0]))
    sd = step.rolling(vol_window, min_periods=2).std().fillna(0.0).to_numpy()  # causal: row 0 has no spread yet
    band = hold_band * sd * np.sqrt(horizon)
    direction = np.where(change > band, 1, np.where(change < -band, -1, 0))
    direction = np.where(np.isnan(change), -9, direction)  # -9: not yet realized
    last_change = np.full(T, np.nan)
    last_change[horizon:] = v[horizon:] - v[:-horizon]
    return pd.DataFrame({"change": change, "direction": direction, "band": band, "volatility": sd,
                         "last_change": last_change})


def direction_probabilities(pred_change: np.ndarray, band: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """P(down), P(hold), P(up) when the change is Normal(pred_change, scale): (n, 3) in CLASSES order."""
    p_down = ndtr((-band - pred_change) / scale)  # the standard normal cdf (what norm.cdf calls, without its overhead)
    p_up = ndtr(-(band - pred_change) / scale)  # norm.sf(z) = ndtr(-z)
    p_hold = np.clip(1.0 - p_down - p_up, 0.0, 1.0)
    P = np.column_stack([p_down, p_hold, p_up]) + 1e-9
    return P / P.sum(axis=1, keepdims=True)


@register
@dataclass
class LinearStage:
    """One fitted stage as plain coefficients: ((X[:, start:stop] - mean) / scale) @ coef + intercept.
    (scikit-learn's StandardScaler and RidgeCV fit them; storing numbers, not estimators, keeps artifacts
    free of pickles and prediction free of sklearn's per-call overhead.)"""

    start: int
    stop: int
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float = 0.0  # the ridge penalty chosen by leave-one-out CV

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, cols: slice, intercept: bool) -> LinearStage:
        sc = StandardScaler().fit(X[:, cols])
        reg = RidgeCV(alphas=ALPHAS, fit_intercept=intercept).fit(sc.transform(X[:, cols]), y)
        return cls(cols.start, cols.stop, sc.mean_.copy(), sc.scale_.copy(), np.asarray(reg.coef_, dtype=float).copy(),
                   float(reg.intercept_), float(reg.alpha_))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return ((X[:, self.start:self.stop] - self.mean) / self.scale) @ self.coef + self.intercept


@register
@dataclass
class FusionModel:
    """One fitted model: standardised ridge stages (penalty chosen by leave-one-out CV on the fit rows), and the
    residual scale calibrated on held-out rows; knows which rows it was trained on."""

    stages: list[LinearStage]
    scale: float
    train_end: int
    fit_end: int
    columns: list[str]
    scale_per_band: float | None = None  # when set, the error scale is this times the row's hold band

    def predict_change(self, X: np.ndarray) -> np.ndarray:
        return sum(st.predict(X) for st in self.stages)

    def error_scale(self, band: np.ndarray) -> np.ndarray | float:
        if self.scale_per_band is None:
            return self.scale
        return np.maximum(self.scale_per_band * np.asarray(band, dtype=float), 1e-12)

    def predict(self, X: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (class probabilities (n, 3) in CLASSES order, predicted change (n,))."""
        chg = self.predict_change(X)
        return direction_probabilities(chg, band, self.error_scale(band)), chg


def fit_model(X: np.ndarray, targets: pd.DataFrame, train_end: int, calibration_fraction: float,
              columns: list[str], n_base: int = 0, warmup: int = 0) -> FusionModel:
    """Fit on rows [warmup, fit_end); calibrate the probability scale on [fit_end, train_end] by log loss.

    The first `warmup` rows are left out of the fit: their lags are zero-filled, rolling windows are short
    and the reservoir is still forgetting its initial state. (Left in, six zero-filled lag rows made
    leave-one-out CV pick a 10^5 times larger ridge penalty on Mackey-Glass and cost a factor 13 in MSE.)

    With `n_base` > 0 the last n_base columns (few, informative: recent changes, selected features) are
    fitted first and the other columns (the many reservoir states) fit the remaining residual, each stage
    with its own ridge penalty, so the fused model contains the linear model of the base columns."""
    n = train_end + 1
    fit_end = max(warmup + 10, int(n * (1 - calibration_fraction)))
    if fit_end >= n:
        raise ValueError(f"too few training rows ({n}) for warmup {warmup} and a held-out calibration stretch")
    y_dir = targets["direction"].to_numpy()[:n]
    y_chg = targets["change"].to_numpy()[:n]
    if (y_dir == -9).any():
        raise AssertionError("training rows include an unrealized target: leakage guard")
    d = X.shape[1]
    groups = [slice(d - n_base, d), slice(0, d - n_base)] if 0 < n_base < d else [slice(0, d)]
    # candidates: with / without intercept (a drift learned on an old regime can dominate a market's
    # forecast; a zero-drift model is the martingale default), and with / without the reservoir stage;
    # the one with the lowest squared error on the held-out calibration rows is kept
    held = slice(fit_end, n)
    candidates = []
    for intercept in (False, True):
        stages, target = [], y_chg[warmup:fit_end].copy()
        for cols in groups:
            stage = LinearStage.fit(X[warmup:fit_end], target, cols, intercept)
            target = target - stage.predict(X[warmup:fit_end])
            stages.append(stage)
        for k in range(1, len(stages) + 1):
            cand = FusionModel(stages[:k], 1.0, train_end, fit_end, columns)
            candidates.append((float(np.mean((y_chg[held] - cand.predict_change(X[held])) ** 2)), cand))
    model = min(candidates, key=lambda c: c[0])[1]
    pred = model.predict_change(X[held])
    resid = y_chg[held] - pred
    s0 = float(np.sqrt(np.mean(resid**2))) or 1e-12
    band = targets["band"].to_numpy()[held]
    y_idx = np.searchsorted(CLASSES, y_dir[held])

    def nll(scale: np.ndarray | float) -> float:
        P = direction_probabilities(pred, band, scale)
        return -float(np.mean(np.log(P[np.arange(len(y_idx)), y_idx])))

    if len(y_idx) < 20:
        model.scale = s0
        return model
    # two error models, each with one factor fitted by log loss on the held-out rows: a constant scale, or a
    # scale proportional to the recent volatility (through the hold band, which is hold_band x rolling std),
    # so that the probabilities follow a change of regime between refits; the lower held-out loss wins
    fit_c = minimize_scalar(lambda lk: nll(s0 * np.exp(lk)), bounds=(-4, 4), method="bounded")
    model.scale = s0 * float(np.exp(fit_c.x))
    if np.all(band > 0):
        b0 = float(np.sqrt(np.mean(resid**2) / np.mean(band**2)))
        fit_v = minimize_scalar(lambda lk: nll(b0 * np.exp(lk) * band), bounds=(-4, 4), method="bounded")
        if fit_v.fun < fit_c.fun:
            model.scale_per_band = b0 * float(np.exp(fit_v.x))
    return model


def walk_forward(X: np.ndarray, targets: pd.DataFrame, horizon: int = 1, train_min: int = 500, refit_every: int = 250,
                 calibration_fraction: float = 0.3, columns: list[str] | None = None, n_base: int = 0,
                 warmup: int = 50) -> tuple[pd.DataFrame, FusionModel]:
    """Predictions for every row t >= train_min, each by a model trained only on targets realized by t.

    Returns the prediction frame (row, p_down, p_hold, p_up, pred_change, error_scale, direction, confidence,
    train_end, model_id) and the last fitted model (for serving the next rows)."""
    X = np.asarray(X, dtype=float)
    T = len(X)
    if T != len(targets):
        raise ValueError("features and targets differ in length")
    if train_min < 50 or T <= train_min:
        raise ValueError(f"need more than train_min={train_min} rows (and train_min >= 50); got {T}")
    out = []
    model = None
    band = targets["band"].to_numpy()
    for k, t0 in enumerate(range(train_min, T, refit_every)):
        train_end = t0 - horizon  # last row whose target (realized at train_end + h) is known at t0
        model = fit_model(X, targets, train_end, calibration_fraction, columns or [], n_base, warmup)
        rows = np.arange(t0, min(T, t0 + refit_every))
        probs, chg = model.predict(X[rows], band[rows])
        scale = np.broadcast_to(model.error_scale(band[rows]), rows.shape)
        out.append(pd.DataFrame({"row": rows, "p_down": probs[:, 0], "p_hold": probs[:, 1], "p_up": probs[:, 2],
                                 "pred_change": chg, "error_scale": scale, "train_end": train_end, "model_id": k}))
    pred = pd.concat(out, ignore_index=True)
    P = pred[["p_down", "p_hold", "p_up"]].to_numpy()
    pred["direction"] = CLASSES[P.argmax(axis=1)]
    pred["confidence"] = P.max(axis=1)
    if ((pred["train_end"] + horizon) > pred["row"]).any():
        raise AssertionError("a model was fit on data at or after its prediction time")
    return pred, model


def lag_matrix(values: np.ndarray, p: int = 5) -> np.ndarray:
    """The last p one-step changes known at t: column k holds x_{t-k} - x_{t-k-1} (0 before the series starts)."""
    d = np.diff(np.asarray(values, dtype=float), prepend=np.nan)
    lags = np.column_stack([np.concatenate([np.full(k, np.nan), d[: len(d) - k]]) for k in range(p)])
    return np.nan_to_num(lags)


def ar_forecast(values: np.ndarray, targets: pd.DataFrame, p: int = 5, horizon: int = 1, train_min: int = 500,
                refit_every: int = 250) -> np.ndarray:
    """AR(p) on one-step changes, refit walk-forward at the same points; h-step forecast of the change."""
    v = np.asarray(values, dtype=float)
    d = np.diff(v, prepend=np.nan)
    T = len(v)
    lags = np.column_stack([np.roll(d, k) for k in range(p)])  # lags[t] = d_t, d_{t-1}, ...
    lags[: p + 1] = np.nan
    y = targets["change"].to_numpy()
    out = np.full(T, np.nan)
    for t0 in range(train_min, T, refit_every):
        train_end = t0 - horizon
        rows = np.arange(p + 1, train_end + 1)
        ok = np.isfinite(lags[rows]).all(axis=1) & np.isfinite(y[rows])
        A = np.column_stack([lags[rows][ok], np.ones(ok.sum())])
        coef, *_ = np.linalg.lstsq(A, y[rows][ok], rcond=None)
        pr = np.arange(t0, min(T, t0 + refit_every))
        out[pr] = np.column_stack([lags[pr], np.ones(len(pr))]) @ coef
    return out


def direction_of(change_forecast: np.ndarray, band: np.ndarray) -> np.ndarray:
    return np.where(change_forecast > band, 1, np.where(change_forecast < -band, -1, 0))
