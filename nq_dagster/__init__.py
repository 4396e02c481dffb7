"""nq-dagster: streams of numbers into calibrated, validated predictions, orchestrated by Dagster."""

__version__ = "0.1.0"
