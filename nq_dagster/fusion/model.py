"""The prediction model as training saves it and streaming continues it: a source's `ModelVersion` (fitted
coefficients, selected features, calibration table, quantum results), its `LiveCalibration` (the error scale a
stream recalibrates from the outcomes it realizes, on training's grid) and the `ServingState` that bundles
them with the source's `StreamState` (fusion/stream.py). Plain dataclasses: training (fusion/training.py)
builds them, the predictor (fusion/predictor.py) reads them, nq_dagster/codecs.py lets them into artifacts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np

from nq_dagster.config import PipelineConfig
from nq_dagster.fusion.intervals import IntervalState
from nq_dagster.fusion.stream import CANDIDATES, StreamState
from nq_dagster.fusion.walkforward import FusionModel, calibrate

# The layout of the design matrix and the probability rule a model was fit with; a model of another design is
# refused, never fed columns it was not fit on nor read with another probability rule.
# 3: [spike reservoir | analog reservoir and inputs | selected features | 16 recent changes | level | seasonal
# change]; 4: the same design, probabilities mixed with the base rates (`walkforward.calibrate`); 5: the same
# design and rule, base candidates without the selected features, stages chosen by the one-standard-error rule
# (`walkforward.simplest_within_one_se`). 1 and 2 (no analog block, 5 changes, no seasonal column) too.
DESIGN_VERSION = 5


@dataclass
class ModelVersion:
    """A trained model of one source, as streaming and serving use it."""

    source: str
    model_version: str
    config: dict  # the PipelineConfig it was trained with
    model: FusionModel
    selected: list[str]  # candidate features in the design, in order
    quantum: dict  # the feature-selection QUBO's results (the record's quantum_results)
    reliability: list[dict]  # realized walk-forward accuracy per confidence bin
    train_end_ns: int  # time of the last row whose target the model saw
    step_ms: float  # median spacing of the training rows (time_horizon_ms = horizon x step)
    fit_seconds: float  # wall time of the walk-forward fit that produced it
    trained_rows: int
    created_at: str
    design: int = 1  # the layout of the design matrix it was fit on (DESIGN_VERSION when trained here)

    @property
    def cfg(self) -> PipelineConfig:
        return PipelineConfig(**self.config)

    def selected_index(self) -> np.ndarray:
        return np.array([CANDIDATES.index(c) for c in self.selected], dtype=int)

    def calibration(self, confidence: float) -> dict:
        """The accuracy the model actually achieved, out of sample, at this confidence."""
        for b in self.reliability:
            if b["confidence_bin"][0] <= confidence <= b["confidence_bin"][1]:
                return {
                    **b,
                    "note": "walk-forward predictions of this source in this confidence bin, "
                    "realized outcomes",
                }
        return {"note": "no realized walk-forward predictions to compare with"}


@dataclass
class LiveCalibration:
    """The model's error scale as a stream recalibrates it from the outcomes it realizes, on training's grid:
    at row t = t0 + k x every (k >= 1) the scale is refitted (`walkforward.calibrate`) on the rows
    max(fit_end, t - h + 1 - window) .. t - h, exactly as `walk_forward_forecaster` does between refits, so a
    stream's confidences equal the training graph's over the same rows. Holds the last window + h rows'
    predicted change, hold band and value (24 bytes a row)."""

    t0: int  # the model's first predicted row (train_end + horizon)
    every: int
    window: int
    horizon: int
    fit_end: int
    first_row: int  # row of pred[0]
    pred: np.ndarray
    band: np.ndarray
    value: np.ndarray
    scale: float
    scale_per_band: float | None = None
    mix: float = 1.0  # as FusionModel's: the share of the error model against the base rate
    base_rate: np.ndarray | None = None

    def error_scale(self, band: float) -> float:
        return self.scale if self.scale_per_band is None else max(self.scale_per_band * band, 1e-12)

    def before(self, t: int, x_t: float) -> LiveCalibration:
        """The calibration for row t (whose value is x_t): recalibrated when t is on the grid."""
        if t <= self.t0 or (t - self.t0) % self.every or self.first_row + len(self.pred) != t:
            return self
        h = self.horizon
        last = t - h
        lo = max(self.fit_end, last + 1 - self.window, self.first_row)
        if last < lo:
            return self
        i = np.arange(lo, last + 1) - self.first_row
        values = np.append(self.value, x_t)
        chg = values[i + h] - values[i]
        band = self.band[i]
        y_dir = np.where(chg > band, 1, np.where(chg < -band, -1, 0))
        holder = FusionModel([], self.scale, 0, 0, [], self.scale_per_band)
        calibrate(holder, self.pred[i], chg, y_dir, band)
        return replace(
            self,
            scale=holder.scale,
            scale_per_band=holder.scale_per_band,
            mix=holder.mix,
            base_rate=holder.base_rate,
        )

    def after(self, pred: float, band: float, x: float) -> LiveCalibration:
        """Row t's prediction recorded (the next row is t + 1)."""
        keep = self.window + self.horizon
        cut = max(0, len(self.pred) + 1 - keep)
        new = copy.copy(self)  # once per source and tick: a shallow copy, cheaper than dataclasses.replace
        new.first_row = self.first_row + cut
        new.pred, new.band, new.value = (
            _pushed(a, v, cut) for a, v in ((self.pred, pred), (self.band, band), (self.value, x))
        )
        return new


def _pushed(a: np.ndarray, v: float, cut: int) -> np.ndarray:
    """a with v appended and its first `cut` values dropped, as a new array."""
    out = np.empty(len(a) + 1 - cut)
    out[:-1] = a[cut:]
    out[-1] = v
    return out


@dataclass
class ServingState:
    """What a stream continues from: the model version and the source's state after its last row."""

    model: ModelVersion
    stream: StreamState
    calibration: LiveCalibration | None = None  # None: the model's own scale until the next training
    intervals: IntervalState | None = None  # the conformal state (fusion/intervals.py); None: no intervals
