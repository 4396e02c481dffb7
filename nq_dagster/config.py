"""The one config loader.

Every tunable of the pipeline lives in `PipelineConfig`, with the defaults of the
original platform (DESIGN.md section 8). A user overrides them in
`$NQ_HOME/config.json`. The config is versioned by the hash of its content, and
every model artefact records the version (and the full config) it was built with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PipelineConfig:
    # spike encoding (4.1)
    encoding: str = "population"  # rate | temporal | population | phase
    neuron_count: int = 1000
    window_bins: int = 20  # bins per time step; one bin = bin_ms milliseconds
    bin_ms: float = 1.0
    min_rate_hz: float = 1.0
    max_rate_hz: float = 100.0
    feature_window: int = 50  # rolling window (steps) for z-scores and volatility
    # reservoir (4.2)
    reservoir_mode: str = "esn"  # esn | lif
    reservoir_size: int = 500
    spectral_radius: float = 0.95
    leak: float = 0.3
    connectivity: float = 0.1
    input_scaling: float = 1.0
    # patterns (4.3)
    detection_threshold: float = 0.7
    # quantum (4.4)
    qubit_count: int = 10
    evolution_time: float = 1.0
    energy_tolerance: float = 1e-6
    select_k: int = 4
    # fusion (5)
    horizon: int = 1
    hold_band: float = 0.1  # hold when |change| < hold_band * rolling std of changes
    train_min: int = 500
    refit_every: int = 250
    calibration_fraction: float = 0.3
    ridge_alpha: float = 1.0
    seed: int = 7

    @property
    def version(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# The one rule of "rows a source needs before training", used by `nq ingest`, `nq run`, the landing sensor,
# the daily automation and the server's 409: the walk-forward fits its first model on MIN_TRAIN rows and
# predicts the rest (fusion.walkforward.training_schedule raises below MIN_ROWS).
MIN_TRAIN = 100
MIN_ROWS = 150


def rows_needed(config: PipelineConfig | None = None, override: int | None = None) -> int:
    """Rows a source needs before it can train: the walk-forward's MIN_ROWS whatever the config (a series
    shorter than 2 x train_min trains on half of itself). `override` (NQ_MIN_ROWS_TO_TRAIN) replaces it for
    the landing sensor and the automation only: tests drive them with tiny sources."""
    del config  # every config trains from MIN_ROWS rows (fusion.walkforward.training_schedule)
    return MIN_ROWS if override is None else int(override)


# the services of the original's config API, and the fields each one owns
SERVICES = {
    "neuromorphic": (
        "encoding",
        "neuron_count",
        "window_bins",
        "bin_ms",
        "min_rate_hz",
        "max_rate_hz",
        "feature_window",
        "reservoir_mode",
        "reservoir_size",
        "spectral_radius",
        "leak",
        "connectivity",
        "input_scaling",
        "detection_threshold",
    ),
    "quantum": ("qubit_count", "evolution_time", "energy_tolerance", "select_k"),
    "fusion": (
        "horizon",
        "hold_band",
        "train_min",
        "refit_every",
        "calibration_fraction",
        "ridge_alpha",
        "seed",
    ),
}
CHOICES = {"encoding": ("rate", "temporal", "population", "phase"), "reservoir_mode": ("esn", "lif")}
POSITIVE = {
    "neuron_count",
    "window_bins",
    "bin_ms",
    "max_rate_hz",
    "feature_window",
    "reservoir_size",
    "spectral_radius",
    "qubit_count",
    "evolution_time",
    "energy_tolerance",
    "select_k",
    "horizon",
    "train_min",
    "refit_every",
    "input_scaling",
}
UNIT_INTERVAL = {"leak", "connectivity", "calibration_fraction", "detection_threshold"}
# The largest value of each field that a training on one machine can run (issue 26: a stored 1e7 reservoir
# asked for 728 TiB): the reservoir's exact eigenvalues are O(size^3), the spike trains rows x bins x neurons,
# the quantum pool is capped by the candidate features (fewer than 40) and the state vector's 2^n amplitudes.
UPPER = {
    "neuron_count": 20_000,
    "window_bins": 200,
    "bin_ms": 1_000.0,
    "min_rate_hz": 10_000.0,
    "max_rate_hz": 10_000.0,
    "feature_window": 10_000,
    "reservoir_size": 5_000,
    "spectral_radius": 10.0,
    "input_scaling": 1_000.0,
    "qubit_count": 30,
    "evolution_time": 10_000.0,
    "energy_tolerance": 1.0,
    "select_k": 30,
    "horizon": 10_000,
    "hold_band": 100.0,
    "train_min": 10_000_000,
    "refit_every": 10_000_000,
    "ridge_alpha": 1e12,
    "seed": 2**32 - 1,
}


class ConfigError(ValueError):
    """A config value that the pipeline cannot use; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def validate_overrides(overrides: dict, where: str = "config") -> dict:
    """Check names, types and ranges of config values; raises ConfigError naming the first bad field."""
    if not isinstance(overrides, dict):
        raise ConfigError(where, "expected a JSON object of field: value")
    types = {f.name: type(f.default) for f in dataclasses.fields(PipelineConfig)}
    out = {}
    for name, value in overrides.items():
        if name not in types:
            raise ConfigError(name, f"unknown field; known fields are {sorted(types)}")
        want = types[name]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, want):
            raise ConfigError(name, f"expected {want.__name__}, got {type(value).__name__} {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(name, f"{value!r} is not one of {list(CHOICES[name])}")
        if want is float and not math.isfinite(value):
            raise ConfigError(name, f"{value!r} is not a finite number")
        if name in POSITIVE and not value > 0:
            raise ConfigError(name, f"must be > 0, got {value!r}")
        if name in UNIT_INTERVAL and not 0 <= value <= 1:
            raise ConfigError(name, f"must be within [0, 1], got {value!r}")
        if name == "feature_window" and value < 2:
            raise ConfigError(name, f"must be >= 2 (a rolling std needs two changes), got {value!r}")
        if name in ("min_rate_hz", "hold_band", "seed") and value < 0:
            raise ConfigError(name, f"must be >= 0, got {value!r}")
        if name == "ridge_alpha" and not value > 0:
            raise ConfigError(name, f"must be > 0 (0 leaves the ridge fit singular), got {value!r}")
        if name in UPPER and value > UPPER[name]:
            raise ConfigError(
                name, f"must be at most {UPPER[name]:g} (what one machine can train), got {value!r}"
            )
        out[name] = value
    merged = {**PipelineConfig().as_dict(), **out}
    if merged["min_rate_hz"] >= merged["max_rate_hz"]:
        raise ConfigError("min_rate_hz", f"must be below max_rate_hz ({merged['max_rate_hz']})")
    if merged["select_k"] > merged["qubit_count"]:
        raise ConfigError("select_k", f"must be at most qubit_count ({merged['qubit_count']})")
    return out


def load_config(home: str | Path | None = None) -> PipelineConfig:
    """Defaults, overridden by `$NQ_HOME/config.json` when it exists.

    Unknown keys, wrong types and out-of-range values are errors naming the field, so a typo never silently
    falls back to a default.
    """
    if home is None:
        return PipelineConfig()
    path = Path(home) / "config.json"
    if not path.exists():
        return PipelineConfig()
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the file or delete it"
        ) from exc
    try:
        return PipelineConfig(**validate_overrides(overrides, str(path)))
    except ConfigError as exc:
        raise ValueError(f"{path}: {exc}") from None


# what each key means, for the generated table of docs/configuration.md (config_table)
MEANINGS = {
    "encoding": "spike encoding of the input features",
    "neuron_count": "input neurons in total, split over the features",
    "window_bins": "bins per time step (one bin = bin_ms)",
    "bin_ms": "length of one bin, milliseconds",
    "min_rate_hz": "rate encoding: firing rate of a 0 input, Hz",
    "max_rate_hz": "rate encoding: firing rate of a 1 input, Hz",
    "feature_window": "rolling window (steps) of z-scores and volatility",
    "reservoir_mode": "echo-state network or leaky integrate-and-fire reservoir",
    "reservoir_size": "reservoir neurons",
    "spectral_radius": "largest absolute eigenvalue of the recurrent weights",
    "leak": "reservoir leak rate",
    "connectivity": "share of recurrent weights that are non-zero",
    "input_scaling": "scale of the input weights",
    "detection_threshold": "pattern strength above which a pattern counts as detected",
    "qubit_count": "qubits of the feature-selection and portfolio QUBOs (state vector of 2^n)",
    "evolution_time": "annealing / evolution time",
    "energy_tolerance": "convergence: energy within this of the exact ground energy",
    "select_k": "features the quantum selection keeps",
    "horizon": "steps ahead a prediction is for",
    "hold_band": "a change smaller than hold_band x rolling std of changes is `hold`",
    "train_min": "rows the first walk-forward model fits on (scaled down for short series)",
    "refit_every": "rows between walk-forward refits (scaled for short series)",
    "calibration_fraction": "share of realized rows held out to calibrate confidences",
    "ridge_alpha": "ridge penalty of the readout",
    "seed": "seed of every random draw (encoders, reservoir weights)",
}


def _valid(name: str) -> str:
    """The values `validate_overrides` accepts for one key, in words."""
    if name in CHOICES:
        return " \\| ".join(CHOICES[name])
    if name in UNIT_INTERVAL:
        return "0 to 1"
    low = {"feature_window": ">= 2", "min_rate_hz": ">= 0", "hold_band": ">= 0", "seed": ">= 0"}.get(
        name, "> 0" if name in POSITIVE or name == "ridge_alpha" else ""
    )
    top = UPPER.get(name)
    high = "" if top is None else f"at most {int(top):,}" if float(top).is_integer() else f"at most {top:g}"
    also = {"min_rate_hz": ", below max_rate_hz", "select_k": ", at most qubit_count"}.get(name, "")
    return ", ".join(x for x in (low, high) if x) + also


def config_table() -> str:
    """The table of `config.json` keys in docs/configuration.md: key, default, valid values, meaning, read
    from the rules `validate_overrides` applies (tests/test_layers.py fails when the page drifts)."""
    rows = ["| key | default | valid | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(PipelineConfig):
        rows.append(f"| `{f.name}` | `{f.default}` | {_valid(f.name)} | {MEANINGS[f.name]} |")
    return "\n".join(rows)
