"""Pure numerics of the neuromorphic stage: spike encoders, reservoir, pattern detectors (no dagster)."""

from nq_dagster.neuromorphic.encoders import ENCODERS, encode, encoder_inputs
from nq_dagster.neuromorphic.patterns import PATTERN_NAMES, detect_patterns
from nq_dagster.neuromorphic.reservoir import Reservoir, ridge_fit, ridge_predict, scale_to_spectral_radius

__all__ = ["ENCODERS", "PATTERN_NAMES", "Reservoir", "detect_patterns", "encode", "encoder_inputs", "ridge_fit",
           "ridge_predict", "scale_to_spectral_radius"]
