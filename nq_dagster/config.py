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


def load_config(home: str | Path | None = None) -> PipelineConfig:
    """Defaults, overridden by `$NQ_HOME/config.json` when it exists.

    Unknown keys are an error, so a typo never silently falls back to a default.
    """
    if home is None:
        return PipelineConfig()
    path = Path(home) / "config.json"
    if not path.exists():
        return PipelineConfig()
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the file or delete it") from exc
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
    return PipelineConfig(**overrides)
