"""`spike_trains`, `reservoir_states`, `patterns`, `features`: the neuromorphic stage, per source."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output

from nq_dagster.assets.automation import TRAINING_AUTOMATION
from nq_dagster.assets.common import SETTINGS, md_table, source_asset, table_metadata
from nq_dagster.deployment import k8s_op_tags
from nq_dagster.resources import ComputeResource, WarehouseResource


@source_asset("neuromorphic", {"torch"}, TRAINING_AUTOMATION)
def spike_trains(
    context: AssetExecutionContext,
    series: pd.DataFrame,
    warehouse: WarehouseResource,
    compute: ComputeResource,
) -> Output[dict]:
    """The encoded input: spikes (step, bin, neuron) stored as packed bits, with neuron identity."""
    from nq_dagster.neuromorphic.encoders import _blocks, encode, encoder_inputs
    from nq_dagster.neuromorphic.stages import INPUT_NAMES, pack_spikes, source_seed

    cfg = warehouse.pipeline_config()
    inputs = encoder_inputs(series["value"].to_numpy(), cfg.feature_window)
    spikes = (
        encode(
            inputs[None],
            cfg.encoding,
            cfg.neuron_count,
            cfg.window_bins,
            cfg.bin_ms,
            cfg.min_rate_hz,
            cfg.max_rate_hz,
            seed=source_seed(cfg.seed, context.partition_key),
            device=compute.torch_device(),
        )[0]
        .cpu()
        .numpy()
    )
    T, W, N = spikes.shape
    total = int(spikes.sum())
    block = _blocks(inputs.shape[1], N)  # neurons are contiguous blocks, one per input feature
    block_rate = [
        float(spikes[:, :, block == b].mean()) * 1000.0 / cfg.bin_ms for b in range(inputs.shape[1])
    ]
    value = {
        **pack_spikes(spikes),
        "inputs": inputs.astype(np.float32),
        "timestamps": series["timestamp"].to_numpy(),
        "encoding": cfg.encoding,
    }
    summary = (
        f"{cfg.encoding} code, {N} neurons x {W} bins of {cfg.bin_ms} ms per step, {T} steps; "
        f"{total} spikes, mean rate {total / (T * N * W * cfg.bin_ms / 1000):.2f} Hz."
    )
    return Output(
        value,
        metadata={
            "encoding": cfg.encoding,
            "steps": T,
            "neurons": N,
            "bins_per_step": W,
            "spike_count": total,
            "mean_rate_hz": total / (T * N * W * cfg.bin_ms / 1000),
            "packed_bytes": int(value["packed"].nbytes),
            "mean_rate_hz_per_feature_block": MetadataValue.json(
                dict(zip(INPUT_NAMES, block_rate, strict=True))
            ),
            "summary": MetadataValue.md(summary),
        },
    )


@source_asset("neuromorphic", {"torch"}, TRAINING_AUTOMATION, op_tags=k8s_op_tags("gpu", SETTINGS))
def reservoir_states(
    context: AssetExecutionContext, spike_trains: dict, warehouse: WarehouseResource, compute: ComputeResource
) -> Output[dict]:
    """Reservoir features per step, and the final state so that streaming runs continue from it."""
    import torch

    from nq_dagster.neuromorphic.stages import build_reservoir, reservoir_input, unpack_spikes

    cfg = warehouse.pipeline_config()
    device = compute.torch_device()
    spikes = unpack_spikes(spike_trains)
    u = reservoir_input(spikes)
    res = build_reservoir(cfg, u.shape[1], context.partition_key, device)
    states, final = res.run(torch.as_tensor(u)[None])
    states = states[0].cpu().numpy()
    value = {
        "states": states.astype(np.float32),
        "final_state": final.to("cpu"),
        "timestamps": spike_trains["timestamps"],
        "mode": cfg.reservoir_mode,
        "config_version": cfg.version,
    }
    return Output(
        value,
        metadata={
            "mode": cfg.reservoir_mode,
            "device": device,
            "reservoir_size": cfg.reservoir_size,
            "spectral_radius": res.actual_spectral_radius(),
            "requested_spectral_radius": cfg.spectral_radius,
            "leak": cfg.leak,
            "steps": len(states),
            "mean_abs_activation": float(np.abs(states).mean()),
            "state_bytes_per_source": int(
                sum(
                    t.numel() * t.element_size()
                    for t in (final.x, final.v, final.z, final.refr)
                    if t is not None
                )
            ),
        },
    )


@source_asset("neuromorphic", {"numpy", "parquet"}, TRAINING_AUTOMATION)
def patterns(
    context: AssetExecutionContext, spike_trains: dict, reservoir_states: dict, warehouse: WarehouseResource
) -> Output[pd.DataFrame]:
    """The eight pattern strengths per step, in [0, 1]."""
    from nq_dagster.neuromorphic.patterns import PATTERN_NAMES, detect_patterns
    from nq_dagster.neuromorphic.stages import unpack_spikes

    cfg = warehouse.pipeline_config()
    strengths = detect_patterns(unpack_spikes(spike_trains), reservoir_states["states"])
    df = pd.DataFrame({"timestamp": spike_trains["timestamps"], **strengths})
    prevalence = pd.DataFrame(
        {
            "pattern": list(PATTERN_NAMES),
            "mean_strength": [float(df[p].mean()) for p in PATTERN_NAMES],
            "detected_share": [float((df[p] >= cfg.detection_threshold).mean()) for p in PATTERN_NAMES],
        }
    )
    bars = "\n".join(
        f"{p:16s} {'#' * int(round(40 * s))} {s:.2f}"
        for p, s in zip(prevalence["pattern"], prevalence["detected_share"], strict=True)
    )
    summary = (
        f"Share of steps with strength >= {cfg.detection_threshold}:\n\n```\n{bars}\n```\n\n"
        + md_table(prevalence)
    )
    meta = table_metadata(df, summary)
    meta.update(
        {
            f"detected_share/{p}": float(s)
            for p, s in zip(prevalence["pattern"], prevalence["detected_share"], strict=True)
        }
    )
    return Output(df, metadata=meta)


@source_asset("neuromorphic", {"pandas", "parquet"}, TRAINING_AUTOMATION)
def features(
    context: AssetExecutionContext, series: pd.DataFrame, spike_trains: dict, patterns: pd.DataFrame
) -> Output[pd.DataFrame]:
    """Candidate fusion features per step (all causal): pattern strengths and spike statistics, plus the
    value and the encoder inputs. The reservoir states join in fusion through its readout."""
    from nq_dagster.neuromorphic.patterns import PATTERN_NAMES
    from nq_dagster.neuromorphic.stages import INPUT_NAMES, spike_statistics, unpack_spikes

    spikes = unpack_spikes(spike_trains)
    df = pd.DataFrame({"timestamp": series["timestamp"].to_numpy(), "value": series["value"].to_numpy()})
    for k, name in enumerate(INPUT_NAMES):
        df[name] = spike_trains["inputs"][:, k].astype(float)
    for p in PATTERN_NAMES:
        df[p] = patterns[p].to_numpy()
    for name, v in spike_statistics(spikes).items():
        df[name] = v
    return Output(df, metadata=table_metadata(df, f"{len(df)} steps x {df.shape[1] - 2} candidate features."))
