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

Gaps: with the rows' timestamps, row t's target is realized only when row t + h came within
`record.GAP_TOLERANCE` x h x the series' median spacing of row t (`record.within_horizon`, the rule the
prediction server's outcomes apply to the same ticks). A row whose horizon tick came later (the feed stopped)
is flagged `gap` in the targets: its change spans the stop, not the horizon, so it is left out of every fit's
regression and calibration rows at a refit (`fit_model`) and out of the report's accuracy and coverage
(`validation.evaluate`), and counted there. The error scale's recalibration between refits (`_recalibrate`)
still reads them: the stream's `model.LiveCalibration` repeats it tick by tick without the ticks' times, and
both must stay equal (not changed yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import ndtr

# the shortest series that trains (MIN_TRAIN rows before the first prediction): one rule, config.rows_needed
from nq_dagster.config import MIN_ROWS, MIN_TRAIN
from nq_dagster.fusion.record import within_horizon
from nq_dagster.fusion.ridge import GramSums, LinearStage, RidgeBasis
from nq_dagster.fusion.ticks import to_ns

CLASSES = np.array([-1, 0, 1])  # down, hold, up
CLASS_NAMES = {-1: "down", 0: "hold", 1: "up"}
UNREALIZED = -9  # the direction of a row whose target lies beyond the data (not yet realized)


def median_spacing_ms(timestamps) -> float:
    """The source's spacing: the median time between consecutive rows, in ms (0 with fewer than two rows);
    a record's time_horizon_ms is horizon x this (`training.model_version_from_fit`)."""
    ts = to_ns(timestamps)
    return float(np.median(np.diff(ts)) / 1e6) if len(ts) > 1 else 0.0


def horizon_gaps(timestamps, horizon: int, step_ms: float | None = None) -> np.ndarray:
    """Per row, whether its horizon tick (row t + h) came too late to realize its prediction: more than
    `record.GAP_TOLERANCE` x h x step_ms after row t (`record.within_horizon`, the server's rule), step_ms the
    median spacing unless given. Rows whose horizon lies beyond the data are not gaps (not yet realized)."""
    ts = to_ns(timestamps)
    step = median_spacing_ms(ts) if step_ms is None else float(step_ms)
    gap = np.zeros(len(ts), dtype=bool)
    if len(ts) > horizon:
        elapsed_ms = (ts[horizon:] - ts[:-horizon]) / 1e6
        gap[:-horizon] = ~within_horizon(elapsed_ms, step * horizon)
    return gap


def make_targets(
    values: np.ndarray,
    horizon: int = 1,
    hold_band: float = 0.1,
    vol_window: int = 50,
    timestamps=None,
) -> pd.DataFrame:
    """Per row t: the realized change over the horizon, its direction class, the hold band, the recent
    volatility, the last change, and `gap` (with `timestamps`: the horizon tick came too late to realize the
    prediction, `horizon_gaps`; all False without)."""
    v = np.asarray(values, dtype=float)
    T = len(v)
    change = np.full(T, np.nan)
    change[: T - horizon] = v[horizon:] - v[:-horizon]
    step = pd.Series(np.diff(v, prepend=v[0]))
    # causal: row 0 has no spread yet
    sd = step.rolling(vol_window, min_periods=2).std().fillna(0.0).to_numpy()
    band = hold_band * sd * np.sqrt(horizon)
    direction = np.where(change > band, 1, np.where(change < -band, -1, 0))
    direction = np.where(np.isnan(change), UNREALIZED, direction)
    last_change = np.full(T, np.nan)
    last_change[horizon:] = v[horizon:] - v[:-horizon]
    gap = np.zeros(T, dtype=bool) if timestamps is None else horizon_gaps(timestamps, horizon)
    if len(gap) != T:
        raise ValueError(f"{len(gap)} timestamps for {T} values")
    return pd.DataFrame(
        {
            "change": change,
            "direction": direction,
            "band": band,
            "volatility": sd,
            "last_change": last_change,
            "gap": gap,
        }
    )


def realized_rows(targets: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Of these rows, which have a realized outcome: the target within the data and not a gap."""
    rows = np.asarray(rows)
    ok = targets["direction"].to_numpy()[rows] != UNREALIZED
    if "gap" in targets.columns:
        ok &= ~targets["gap"].to_numpy()[rows]
    return ok


def direction_probabilities(
    pred_change: np.ndarray,
    band: np.ndarray,
    scale: np.ndarray | float,
    mix: np.ndarray | float = 1.0,
    base_rate: np.ndarray | None = None,
) -> np.ndarray:
    """P(down), P(hold), P(up) when the change is Normal(pred_change, scale): (n, 3) in CLASSES order; with
    `base_rate` (3,) or (n, 3), mixed with it: mix x model + (1 - mix) x base rate (`calibrate` fits mix)."""
    p_down = ndtr((-band - pred_change) / scale)  # the normal cdf (what norm.cdf calls, without its overhead)
    p_up = ndtr(-(band - pred_change) / scale)  # norm.sf(z) = ndtr(-z)
    p_hold = np.clip(1.0 - p_down - p_up, 0.0, 1.0)
    P = np.column_stack([p_down, p_hold, p_up]) + 1e-9
    P = P / P.sum(axis=1, keepdims=True)
    if base_rate is None:
        return P
    mix = np.reshape(np.asarray(mix, dtype=float), (-1, 1))
    return mix * P + (1.0 - mix) * np.asarray(base_rate, dtype=float)


RECAL_WINDOW = 250  # at most this many latest realized rows refit a model's error scale between refits
MAX_REFITS = 40  # a long series is refit at most this many times (each refit reads every earlier row)


@dataclass(frozen=True)
class Schedule:
    """When models are refit on a series of `rows` rows: the first prediction row, the refit interval, and the
    warm-up rows left out of every fit. The config's train_min / refit_every hold for series of at least
    2 x train_min rows; a shorter series (down to MIN_ROWS) trains on half of itself (at least MIN_TRAIN
    rows), refits about five times over the rest, and leaves a fifth of the first training stretch (at most 50
    rows) as warm-up, so that series of 150-1000 rows train instead of failing. A long series is refit at most
    MAX_REFITS times (refit_every grows beyond the config's past about 40 x refit_every rows): every refit
    reads all earlier rows, so a fixed interval made training time grow with the square of the length; with
    the budget it grows linearly. Between refits the error scale is still recalibrated every refit_every / 5
    rows."""

    rows: int
    train_min: int
    refit_every: int
    warmup: int


def training_schedule(rows: int, train_min: int, refit_every: int, warmup: int = 50) -> Schedule:
    if rows < MIN_ROWS:
        raise ValueError(
            f"the series has {rows} rows; training needs at least {MIN_ROWS} "
            f"({MIN_TRAIN} to fit the first model and the rest to predict)"
        )
    if rows >= 2 * train_min:
        every = max(refit_every, -(-(rows - train_min) // MAX_REFITS))
        return Schedule(rows, train_min, every, min(warmup, train_min // 5))
    tm = max(MIN_TRAIN, min(train_min, rows // 2))
    return Schedule(rows, tm, min(refit_every, max(10, (rows - tm) // 5)), min(warmup, tm // 5))


def schedule_for(rows: int, cfg) -> Schedule:
    return training_schedule(rows, cfg.train_min, cfg.refit_every)


@dataclass
class FusionModel:
    """One fitted model: standardised ridge stages (penalty chosen by leave-one-out CV on the fit rows), and
    the residual scale calibrated on held-out rows; knows which rows it was trained on."""

    stages: list[LinearStage]
    scale: float
    train_end: int
    fit_end: int
    columns: list[str]
    scale_per_band: float | None = None  # when set, the error scale is this times the row's hold band
    mix: float = 1.0  # the probabilities: mix x the error model's + (1 - mix) x base_rate (`calibrate`)
    base_rate: np.ndarray | None = None  # (3,) class frequencies of the calibration rows
    candidate: str = ""  # which candidate the fit chose ("fused", or the baseline it equals: `fit_model`)

    def predict_change(self, X: np.ndarray) -> np.ndarray:
        return sum(st.predict(X) for st in self.stages)

    def linear_form(self, n_columns: int) -> tuple[np.ndarray, float]:
        """The model as one linear function of a design row, x . w + c: every stage's standardisation and
        coefficients folded together (`predict_change` up to float rounding): what a stream evaluates."""
        w, c = np.zeros(n_columns), 0.0
        for st in self.stages:
            idx = st.columns if st.columns is not None else np.arange(st.start, st.stop)
            k = np.asarray(st.coef, dtype=float).reshape(-1) / st.scale
            np.add.at(w, idx, k)
            c += float(st.intercept) - float(np.dot(st.mean, k))
        return w, c

    def error_scale(self, band: np.ndarray) -> np.ndarray | float:
        if self.scale_per_band is None:
            return self.scale
        return np.maximum(self.scale_per_band * np.asarray(band, dtype=float), 1e-12)

    def predict(self, X: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (class probabilities (n, 3) in CLASSES order, predicted change (n,))."""
        chg = self.predict_change(X)
        return direction_probabilities(chg, band, self.error_scale(band), self.mix, self.base_rate), chg


def calibrate(
    model: FusionModel, pred: np.ndarray, y_chg: np.ndarray, y_dir: np.ndarray, band: np.ndarray
) -> None:
    """Fit the model's error scale on rows it did not fit (predicted and realized change, direction, band).

    Two error models, each with one factor fitted by log loss: a constant scale, or a scale proportional to
    the recent volatility (through the hold band, hold_band x rolling std), so that the probabilities follow a
    change of regime; the lower loss wins. Then the probabilities are shrunk toward the rows' class
    frequencies (add-one smoothed): P = mix x P_model + (1 - mix) x base rate, mix in [0, 1] fitted by log
    loss. A forecast with no skill on these rows gets mix near 0 and says the base rates, instead of a
    confident guess (the Gaussian error model alone is over-confident on noisy series); a forecast with skill
    keeps mix near 1. Fewer than 20 rows: the residuals' root mean square, no mixing."""
    resid = y_chg - pred
    s0 = float(np.sqrt(np.mean(resid**2))) or 1e-12
    model.scale, model.scale_per_band, model.mix, model.base_rate = s0, None, 1.0, None
    if len(resid) < 20:
        return
    y_idx = np.searchsorted(CLASSES, y_dir)

    is_down, is_up = y_idx == 0, y_idx == 2

    def nll(scale: np.ndarray | float) -> float:
        # direction_probabilities' arithmetic for the realized class only (the minimiser calls this ~50 times)
        p_down = ndtr((-band - pred) / scale)
        p_up = ndtr(-(band - pred) / scale)
        p_hold = np.clip(1.0 - p_down - p_up, 0.0, 1.0)
        p_y = np.where(is_down, p_down, np.where(is_up, p_up, p_hold)) + 1e-9
        return -float(np.mean(np.log(p_y / (p_down + p_hold + p_up + 3e-9))))

    fit_c = minimize_scalar(lambda lk: nll(s0 * np.exp(lk)), bounds=(-4, 4), method="bounded")
    model.scale = s0 * float(np.exp(fit_c.x))
    if np.all(band > 0):
        b0 = float(np.sqrt(np.mean(resid**2) / np.mean(band**2)))
        fit_v = minimize_scalar(lambda lk: nll(b0 * np.exp(lk) * band), bounds=(-4, 4), method="bounded")
        if fit_v.fun < fit_c.fun:
            model.scale_per_band = b0 * float(np.exp(fit_v.x))
    base = (np.bincount(y_idx, minlength=3) + 1.0) / (len(y_idx) + 3.0)
    P = direction_probabilities(pred, band, model.error_scale(band))
    p_y, b_y = P[np.arange(len(y_idx)), y_idx], base[y_idx]
    fit_m = minimize_scalar(
        lambda m: -float(np.mean(np.log(m * p_y + (1.0 - m) * b_y))),
        bounds=(0.0, 1.0),
        method="bounded",
        options={"xatol": 1e-4},
    )
    model.mix, model.base_rate = float(fit_m.x), base


def fit_rows(train_end: int, warmup: int, calibration_fraction: float) -> tuple[int, int]:
    """(n, fit_end) of a refit whose last realized row is train_end: every forecaster fits rows [warmup,
    fit_end) and is calibrated on the held-out rows [fit_end, n)."""
    n = train_end + 1
    return n, max(warmup + 10, int(n * (1 - calibration_fraction)))


def simplest_within_one_se(candidates: list[tuple[np.ndarray, int, object]]):
    """The one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani and Friedman, section 7.10) over
    candidates (squared errors on the held-out rows, complexity, model): among the candidates whose mean
    held-out error is within one standard error of the best one's (the standard error of the paired row-by-row
    difference), the least complex (fewest coefficients; then the lower error). On a few dozen held-out rows
    the plain minimum picks whichever larger model the noise favours (a 12-coefficient base on 30 held-out
    rows of a 150-row series); on thousands of rows a real gain is many standard errors and is kept."""
    means = [float(np.mean(e)) for e, _, _ in candidates]
    b = int(np.argmin(means))
    e_b = candidates[b][0]
    ok = []
    for i, (e, k, _) in enumerate(candidates):
        d = e - e_b
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        if means[i] - means[b] <= se:
            ok.append((k, means[i], i))
    return candidates[min(ok)[2]][2]


def direction_log_loss(
    pred: np.ndarray, y_chg: np.ndarray, y_dir: np.ndarray, band: np.ndarray
) -> np.ndarray:
    """Per row, -log of the probability a forecast's calibrated direction classes (`calibrate` on these same
    rows, as the walk-forward calibrates every candidate) give the realized class."""
    holder = FusionModel([], 1.0, 0, 0, [])
    calibrate(holder, pred, y_chg, y_dir, band)
    P = direction_probabilities(pred, band, holder.error_scale(band), holder.mix, holder.base_rate)
    return -np.log(P[np.arange(len(y_dir)), np.searchsorted(CLASSES, y_dir)])


def choose_candidate(
    candidates: list[tuple[np.ndarray, int, FusionModel]], yh: np.ndarray, y_dir: np.ndarray, band: np.ndarray
) -> FusionModel:
    """The candidate (held-out predicted change, coefficients, model) a fit keeps: the record claims a
    direction, so first those whose held-out direction log loss is within one standard error (of the paired
    row-by-row difference) of the lowest; among them, squared error decides by the one-standard-error rule
    (`simplest_within_one_se`). A candidate clearly better in squared error but worse in direction is not kept
    (a laser series' fused readout with lower squared error than the ESN but six points less accurate)."""
    losses = [direction_log_loss(pred, yh, y_dir, band) for pred, _, _ in candidates]
    means = np.array([float(np.mean(x)) for x in losses])
    b = int(np.argmin(means))
    keep = []
    for i, x in enumerate(losses):
        d = x - losses[b]
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        if means[i] - means[b] <= se:
            keep.append(i)
    return simplest_within_one_se(
        [((yh - candidates[i][0]) ** 2, candidates[i][1], candidates[i][2]) for i in keep]
    )


def fit_model(
    X: np.ndarray,
    targets: pd.DataFrame,
    train_end: int,
    calibration_fraction: float,
    columns: list[str],
    n_base: int = 0,
    warmup: int = 0,
    base_variants: list[np.ndarray] | None = None,
    rest_groups: list[np.ndarray] | None = None,
    sums: dict | None = None,
    extra: list[tuple[str, list[LinearStage], int]] | None = None,
    group_names: list[str] | None = None,
    shared: tuple[dict, list] | None = None,
) -> FusionModel:
    """Fit on rows [warmup, fit_end); calibrate the probability scale on [fit_end, train_end] by log loss.

    The first `warmup` rows are left out of the fit: their lags are zero-filled, rolling windows are short
    and the reservoir is still forgetting its initial state (left in, their zero-filled lags drive
    leave-one-out CV to a far larger ridge penalty).

    With `n_base` > 0 the last n_base columns (few, informative: recent changes, the level, selected features)
    are fitted first and the other columns (the many reservoir states) fit the remaining residual, each stage
    with its own ridge penalty, so the fused model contains the linear model of the base columns.
    `base_variants` (column index arrays within the base, e.g. AR orders on differences, with and without the
    level) are the candidate linear models; the one with the lowest squared error on the held-out rows is the
    base. `rest_groups` split the other columns into reservoir blocks (the spiking reservoir, the analog one);
    each is a candidate second stage fitted to the base's residual, its ridge penalty chosen on the held-out
    rows (reservoir states are nearly collinear; leave-one-out picked penalties that extrapolated badly).
    Candidates then: with / without intercept (a drift learned on an old regime can dominate a market's
    forecast; a zero-drift model is the martingale default), the base alone or with one reservoir stage, and
    `extra`: (name, fixed stages, coefficients) fitted elsewhere on the same fit rows (the baselines the
    report scores, `fusion.baselines`), so the fused model is never a choice that excludes a baseline. Among
    them `choose_candidate` keeps those whose direction log loss on the held-out rows (what the record claims)
    is within one standard error of the lowest, then the simplest whose held-out squared error is within one
    standard error of the lowest among those (`simplest_within_one_se`), so each stage stays only where it
    lowers held-out error by more than the noise of those rows. (The penalty and the choice use the same held-
    out rows: 15 penalties of one stage, a mild optimism the walk-forward rows do not share.)
    `shared` = (cache, column ids): base stages of columns with the same ids on the same fit rows (the fused
    model's walk-forward and its ablations read the same linear block) are fitted once per run and reused (the
    same numbers), each stage naming its own design's columns."""
    n, fit_end = fit_rows(train_end, warmup, calibration_fraction)
    if fit_end >= n:
        raise ValueError(
            f"too few training rows ({n}) for warmup {warmup} and a held-out calibration stretch"
        )
    y_dir = targets["direction"].to_numpy()[:n]
    y_chg = targets["change"].to_numpy()[:n]
    if (y_dir == UNREALIZED).any():
        raise AssertionError("training rows include an unrealized target: leakage guard")
    d = X.shape[1]
    fit, held = slice(warmup, fit_end), slice(fit_end, n)
    gap = targets["gap"].to_numpy()[:n] if "gap" in targets.columns else None
    if gap is not None and gap[warmup:].any():
        # a gap row's change spans the feed's stop, not the horizon: neither fitted nor calibrated on
        fit = warmup + np.flatnonzero(~gap[warmup:fit_end])
        held = fit_end + np.flatnonzero(~gap[fit_end:n])
        if len(held) == 0 or len(fit) == 0:
            raise ValueError(
                f"every {'held-out' if len(fit) else 'fit'} row up to row {n - 1} is a gap (its horizon tick "
                "came too late): the series needs rows at its regular spacing to train"
            )
    else:
        gap = None
    Xf, Xh, yf, yh = X[fit], X[held], y_chg[fit], y_chg[held]
    if 0 < n_base < d:
        base_all, rest = np.arange(d - n_base, d), np.arange(0, d - n_base)
    else:
        base_all, rest = np.arange(d), None
    variants = base_variants or [base_all]
    # each variant's fits by intercept; with `shared`, those of the same data (column ids, fit rows) in
    # another walk-forward of this run: fitted once (only the small stages are kept, not the n x p basis)
    if shared is None:
        base_fits: list[dict] = [{} for _ in variants]
    else:
        base_fits = [
            shared[0].setdefault((id(targets), warmup, fit_end, tuple(shared[1][c] for c in cols)), {})
            for cols in variants
        ]
    bases = [
        RidgeBasis(Xf, cols) if len(done) < 2 else None
        for cols, done in zip(variants, base_fits, strict=True)
    ]
    groups = (rest_groups or [rest]) if rest is not None else []
    if sums is None:
        rest_bases = [RidgeBasis(Xf, g) for g in groups]
    else:  # running sums kept across the walk-forward's refits (`walk_forward`): Gram matrices in O(new rows)
        rest_bases = []
        for k, g in enumerate(groups):
            if k not in sums or sums[k].lo != warmup:
                # the running sums serve every refit of this walk-forward: the gaps of the whole series (a
                # later refit's rows may hold gaps this one's do not)
                every = targets["gap"].to_numpy() if "gap" in targets.columns else None
                sums[k] = GramSums(X, g, warmup, None if every is None or not every.any() else ~every)
            rest_bases.append(RidgeBasis(Xf, g, sums[k].upto(fit_end)))
    candidates = []
    stage_names = ["base"] + ["base+" + g for g in (group_names or [f"stage{k}" for k in range(len(groups))])]
    for intercept in (False, True):
        fits = []
        for cols, b, done in zip(variants, bases, base_fits, strict=True):
            if intercept not in done:
                done[intercept] = b.fit(yf, intercept)
            fits.append(relabeled(done[intercept], cols))
        base = min(fits, key=lambda st: float(np.mean((yh - st.predict(Xh)) ** 2)))
        resid_f, resid_h = yf - base.predict(Xf), yh - base.predict(Xh)
        sets = [[base]] + [[base, rb.fit(resid_f, intercept, (Xh, resid_h))] for rb in rest_bases]
        for name, stages in zip(stage_names, sets, strict=True):
            cand = FusionModel(stages, 1.0, train_end, fit_end, columns, candidate=name)
            coefficients = sum(len(st.coef) + intercept for st in stages)
            candidates.append((cand.predict_change(Xh), coefficients, cand))
    for name, stages, coefficients in extra or []:  # the baselines, fitted by their own rule on these rows
        cand = FusionModel(list(stages), 1.0, train_end, fit_end, columns, candidate=name)
        candidates.append((cand.predict_change(Xh), coefficients, cand))
    band_h = targets["band"].to_numpy()[held]
    model = choose_candidate(candidates, yh, y_dir[held], band_h)
    calibrate(model, model.predict_change(Xh), yh, y_dir[held], band_h)
    return model


def relabeled(stage: LinearStage, cols: np.ndarray) -> LinearStage:
    """A fitted stage reading the columns `cols` (the same data at other indices of another design), as
    `RidgeBasis.fit` labels its stages."""
    cols = np.asarray(cols, dtype=np.int64)
    contiguous = len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
    return LinearStage(
        int(cols[0]) if len(cols) else 0,
        int(cols[-1]) + 1 if len(cols) else 0,
        stage.mean.copy(),
        stage.scale.copy(),
        stage.coef.copy(),
        stage.intercept,
        stage.alpha,
        None if contiguous else cols.copy(),
    )


def walk_forward(
    X: np.ndarray,
    targets: pd.DataFrame,
    horizon: int = 1,
    train_min: int = 500,
    refit_every: int = 250,
    calibration_fraction: float = 0.3,
    columns: list[str] | None = None,
    n_base: int = 0,
    warmup: int = 50,
    base_variants: list[np.ndarray] | None = None,
    recalibrate_every: int | None = None,
    rest_groups: list[np.ndarray] | None = None,
    extra=None,
    group_names: list[str] | None = None,
    shared: tuple[dict, list] | None = None,
) -> tuple[pd.DataFrame, FusionModel]:
    """Predictions for every row t >= train_min, each by a model trained only on targets realized by t
    (`fit_model` on the design X at each refit point; `walk_forward_forecaster` does the rest). `extra`:
    train_end -> the fixed candidates `fit_model` takes (the baselines fitted on the same rows).

    Returns the prediction frame (row, p_down, p_hold, p_up, pred_change, error_scale, direction, confidence,
    train_end, model_id) and the last fitted model (for serving the next rows)."""
    X = np.asarray(X, dtype=float)
    if len(X) != len(targets):
        raise ValueError("features and targets differ in length")

    sums: dict = {}

    def fit(train_end: int) -> tuple[FusionModel, object]:
        model = fit_model(
            X,
            targets,
            train_end,
            calibration_fraction,
            columns or [],
            n_base,
            warmup,
            base_variants,
            rest_groups,
            sums,
            extra(train_end) if extra is not None else None,
            group_names,
            shared,
        )
        return model, lambda lo, hi: model.predict_change(X[lo:hi])

    return walk_forward_forecaster(fit, targets, horizon, train_min, refit_every, recalibrate_every)


def walk_forward_forecaster(
    fit,
    targets: pd.DataFrame,
    horizon: int,
    train_min: int,
    refit_every: int,
    recalibrate_every: int | None = None,
) -> tuple[pd.DataFrame, FusionModel]:
    """The one walk-forward rule for every forecaster (the fused model, its ablations and the baselines).

    At each refit point t0 = train_min + k x refit_every, `fit(train_end)` (train_end = t0 - horizon, the last
    row whose target is realized at t0) returns a FusionModel whose error scale was calibrated on held-out
    rows [fit_end, train_end] and a function giving its predicted change for rows [lo, hi). The model predicts
    rows t0 .. t0 + refit_every - 1. Between refits its coefficients stay, and its error scale is refitted
    every `recalibrate_every` rows (default refit_every / 5) on the latest realized rows it did not fit (as
    many as its first calibration stretch, at most RECAL_WINDOW), so that the confidence follows a drift of
    the error's size. A direction is the most likely class of the model's own probabilities. The model
    returned for serving has the scale of its last rows; streams recalibrate it on the same grid
    (`fusion.model.LiveCalibration`)."""
    T = len(targets)
    if train_min < MIN_TRAIN // 2 or T <= train_min:
        raise ValueError(
            f"need more than train_min={train_min} rows (and train_min >= {MIN_TRAIN // 2}); got {T}"
        )
    recal = recalibrate_every or recal_every(refit_every)
    out, chosen = [], {}
    band = targets["band"].to_numpy()
    y_chg, y_dir = targets["change"].to_numpy(), targets["direction"].to_numpy()
    for k, t0 in enumerate(range(train_min, T, refit_every)):
        train_end = t0 - horizon
        model, predict = fit(train_end)
        chosen[k] = model.candidate
        window = min(train_end + 1 - model.fit_end, RECAL_WINDOW)
        stop = min(T, t0 + refit_every)
        chg_all = predict(model.fit_end, stop)  # out of sample for this model: rows >= fit_end
        for s0 in range(t0, stop, recal):
            if s0 > t0:
                _recalibrate(model, chg_all, s0 - horizon, window, y_chg, y_dir, band)
            rows = np.arange(s0, min(stop, s0 + recal))
            chg = chg_all[rows - model.fit_end]
            scale = np.broadcast_to(model.error_scale(band[rows]), rows.shape)
            probs = direction_probabilities(chg, band[rows], scale, model.mix, model.base_rate)
            out.append(
                pd.DataFrame(
                    {
                        "row": rows,
                        "p_down": probs[:, 0],
                        "p_hold": probs[:, 1],
                        "p_up": probs[:, 2],
                        "pred_change": chg,
                        "error_scale": scale,
                        "train_end": train_end,
                        "model_id": k,
                    }
                )
            )
    # the last model keeps the scale of its last sub-block: a stream continuing at row T recalibrates on the
    # same grid (t0 + k x recal) from the outcomes it realizes (fusion.model.LiveCalibration), as this loop
    pred = pd.concat(out, ignore_index=True)
    P = pred[["p_down", "p_hold", "p_up"]].to_numpy()
    pred["direction"] = CLASSES[P.argmax(axis=1)]
    pred["confidence"] = P.max(axis=1)
    pred.attrs["candidates"] = chosen  # model_id -> the candidate that refit kept (attrs: not stored)
    if ((pred["train_end"] + horizon) > pred["row"]).any():
        raise AssertionError("a model was fit on data at or after its prediction time")
    return pred, model


def recal_every(refit_every: int) -> int:
    return max(10, refit_every // 5)


def _recalibrate(
    model: FusionModel,
    chg_all: np.ndarray,
    last: int,
    window: int,
    y_chg: np.ndarray,
    y_dir: np.ndarray,
    band: np.ndarray,
) -> None:
    """Refit the error scale on rows (last - window, last], all realized, none before the model's fit_end."""
    lo = max(model.fit_end, last + 1 - window)
    rows = np.arange(lo, last + 1)
    if (y_dir[rows] == UNREALIZED).any():
        raise AssertionError("recalibration rows include an unrealized target: leakage guard")
    calibrate(model, chg_all[rows - model.fit_end], y_chg[rows], y_dir[rows], band[rows])


def lag_matrix(values: np.ndarray, p: int = 5, level: bool = False) -> np.ndarray:
    """The last p one-step changes known at t: column k holds x_{t-k} - x_{t-k-1} (0 before the series
    starts); with `level`, the value x_t as one more column (the AR-on-levels part of the design)."""
    v = np.asarray(values, dtype=float)
    d = np.diff(v, prepend=np.nan)
    lags = np.nan_to_num(
        np.column_stack([np.concatenate([np.full(k, np.nan), d[: len(d) - k]]) for k in range(p)])
    )
    return np.column_stack([lags, v]) if level else lags


def direction_of(change_forecast: np.ndarray, band: np.ndarray) -> np.ndarray:
    return np.where(change_forecast > band, 1, np.where(change_forecast < -band, -1, 0))
