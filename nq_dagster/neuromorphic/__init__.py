"""Pure numerics of the neuromorphic stage: spike encoders, reservoir, pattern detectors (no dagster).

Names are imported on first use (PEP 562), so that importing a submodule (say, the detector names) does not
load torch: the code location stays light to load (tests/test_pipeline.py checks that it imports no torch)."""

import importlib

_WHERE = {
    "ENCODERS": "encoders",
    "encode": "encoders",
    "encoder_inputs": "encoders",
    "PATTERN_NAMES": "patterns",
    "detect_patterns": "patterns",
    "Reservoir": "reservoir",
    "ridge_fit": "reservoir",
    "ridge_predict": "reservoir",
    "scale_to_spectral_radius": "reservoir",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
