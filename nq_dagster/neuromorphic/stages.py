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
    return Reservoir(
        n_inputs,
        cfg.reservoir_size,
        cfg.spectral_radius,
        cfg.leak,
        cfg.connectivity,
        input_scaling=cfg.input_scaling,
        mode=cfg.reservoir_mode,
        seed=source_seed(cfg.seed + 1, source),
        device=device,
    )


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
    return {
        "spike_rate": spikes.sum(axis=(1, 2)) / (N * W),
        "active_fraction": spikes.any(axis=1).mean(axis=1),
    }


# the analog reservoir: a plain echo-state network driven by the value and its change themselves (no spike
# encoding), beside the spiking path. Its states are a stage of the fused model (kept where they lower
# held-out error) and the readout of the validation's ESN baseline.
ANALOG_SIZE = 300
ANALOG_ROWS = 100  # a source's first rows fix the analog inputs' scaling: data only, stable across retrains


def analog_scaling(values: np.ndarray) -> np.ndarray:
    """(mean, std of the values, std of the one-step changes) over the first ANALOG_ROWS values."""
    v = np.asarray(values[:ANALOG_ROWS], dtype=float)
    d = np.diff(v)
    sd = float(v.std()) or 1.0
    sd_d = float(d.std()) if len(d) > 1 and d.std() > 0 else sd
    return np.array([float(v.mean()), sd, sd_d])


def analog_inputs(x: np.ndarray, dx: np.ndarray, scaling: np.ndarray) -> np.ndarray:
    """The analog design inputs (standardised value and change), (T, 2)."""
    return np.column_stack(
        [(np.asarray(x, float) - scaling[0]) / scaling[1], np.asarray(dx, float) / scaling[2]]
    )


def analog_drive(inputs: np.ndarray) -> np.ndarray:
    """The analog reservoir's input: the analog inputs u (standardised value and change) squashed as
    tanh(u / 3), so that a jump of a few standard deviations stays in tanh's responsive range (float64)."""
    return np.tanh(np.asarray(inputs, dtype=float) / 3.0)


def build_analog_reservoir(cfg, source: str, device: str = "cpu") -> Reservoir:
    return Reservoir(
        2,
        ANALOG_SIZE,
        cfg.spectral_radius,
        cfg.leak,
        cfg.connectivity,
        input_scaling=1.0,
        mode="esn",
        seed=source_seed(cfg.seed + 2, source),
        device=device,
    )


def analog_states(values: np.ndarray, cfg, source: str, device: str = "cpu"):
    """The analog reservoir over a whole series: (design block (T, ANALOG_SIZE + 2) = states and inputs, the
    reservoir's final state, the scaling)."""
    import torch

    v = np.asarray(values, dtype=float)
    scaling = analog_scaling(v)
    u = analog_inputs(v, np.diff(v, prepend=v[0]), scaling)
    res = build_analog_reservoir(cfg, source, device)
    states, final = res.run(torch.as_tensor(analog_drive(u), dtype=torch.float32)[None])
    return np.column_stack([states[0].cpu().numpy().astype(float), u]), final, scaling
