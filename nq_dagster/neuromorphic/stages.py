"""The neuromorphic stage as the pipeline runs it: which inputs feed the encoder, how a source's encoder seed
and reservoir are derived, and the per-step spike statistics. Used by the training assets and by the streaming
predictor alike (no dagster import), so both build exactly the same encoder and reservoir for a source."""

from __future__ import annotations

import zlib

import numpy as np

from nq_dagster.neuromorphic.reservoir import Reservoir

INPUT_NAMES = ("in_change", "in_level", "in_volatility")  # the columns of `encoder_inputs`
SPIKE_STAT_NAMES = ("spike_rate", "active_fraction")


def source_seed(base: int, source: str) -> int:
    """The encoder seed of a source: stable across processes and machines (crc32, not Python's hash)."""
    return (base * 1_000_003 + zlib.crc32(source.encode())) & 0x7FFFFFFF


def build_reservoir(cfg, n_inputs: int, source: str, device: str = "cpu") -> Reservoir:
    """The source's reservoir: its weights follow from the config and the source name alone."""
    return Reservoir(n_inputs, cfg.reservoir_size, cfg.spectral_radius, cfg.leak, cfg.connectivity,
                     input_scaling=cfg.input_scaling, mode=cfg.reservoir_mode,
                     seed=source_seed(cfg.seed + 1, source), device=device)


def pack_spikes(spikes: np.ndarray) -> dict:
    T, W, N = spikes.shape
    return {"packed": np.packbits(spikes, axis=-1), "shape": (T, W, N)}


def unpack_spikes(st: dict) -> np.ndarray:
    T, W, N = st["shape"]
    return np.unpackbits(st["packed"], axis=-1, count=N).astype(bool).reshape(T, W, N)


def reservoir_input(spikes: np.ndarray) -> np.ndarray:
    """Per-neuron spike counts of each step, scaled to [0, 1] by the bins per step: (T, N)."""
    return spikes.sum(axis=1, dtype=np.float32) / spikes.shape[1]


def spike_statistics(spikes: np.ndarray) -> dict[str, np.ndarray]:
    """Per step: share of (bin, neuron) slots that spiked, and share of neurons that spiked at all."""
    T, W, N = spikes.shape
    return {"spike_rate": spikes.sum(axis=(1, 2)) / (N * W), "active_fraction": spikes.any(axis=1).mean(axis=1)}
