"""Pure numerics of fusion: targets, walk-forward models, baselines, calibration (no dagster)."""
