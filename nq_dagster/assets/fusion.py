"""`fusion_model`, `predictions`, `validation_report`: walk-forward fusion and its honest evaluation."""

import json
import time
import uuid

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from nq_dagster.assets.common import md_table, source_partitions, table_metadata
from nq_dagster.assets.neuromorphic import INPUT_NAMES, build_reservoir, source_seed, unpack_spikes
from nq_dagster.fusion.pipeline import run_fusion
from nq_dagster.fusion.serving import ServingState, build_state
from nq_dagster.fusion.walkforward import CLASS_NAMES
from nq_dagster.neuromorphic import PATTERN_NAMES
from nq_dagster.resources import DUCKDB_POOL, WarehouseResource
from nq_dagster.validation.evaluate import evaluate
from nq_dagster.validation.report import markdown_summary, write_report


@asset(partitions_def=source_partitions, group_name="fusion")
def fusion_model(context: AssetExecutionContext, features: pd.DataFrame, reservoir_states: dict,
                 feature_selection: dict, warehouse: WarehouseResource) -> Output[dict]:
    """Walk-forward fused model (reservoir readout + selected features + recent changes), its ablations and AR(5)."""
    cfg = warehouse.pipeline_config()
    t0 = time.perf_counter()
    out = run_fusion(features, reservoir_states["states"], feature_selection["selected"], cfg)
    elapsed = time.perf_counter() - t0
    version = f"{cfg.version}-{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S')}"
    out.update({"model_version": version, "config": cfg.as_dict(), "config_version": cfg.version,
                "selected": feature_selection["selected"], "fit_seconds": elapsed,
                "per_prediction_ms": 1000 * elapsed / max(1, len(out["fused"]))})
    return Output(out, metadata={"model_version": version, "config_version": cfg.version,
                                 "walk_forward_predictions": len(out["fused"]), "refits": int(out["fused"]["model_id"].max() + 1),
                                 "selected_features": MetadataValue.json(feature_selection["selected"]),
                                 "fit_seconds": elapsed})


def quantum_summary(q: dict) -> dict:
    return {"energy": q["energy"], "phase_coherence": q["annealed_coherence"],
            "convergence": {"converged": q["converged"], "iterations": q["iterations"],
                            "annealing_success_probability": q["annealing_success_probability"],
                            "method": q["method"]}}


@asset(partitions_def=source_partitions, group_name="fusion")
def serving_state(context: AssetExecutionContext, fusion_model: dict, series: pd.DataFrame, spike_trains: dict,
                  reservoir_states: dict, feature_selection: dict, warehouse: WarehouseResource) -> Output[ServingState]:
    """What `nq predict` and the streaming job continue from: the latest model, the reservoir and its final
    state, and the tails of values, spikes and states the look-back windows need (all on CPU)."""
    cfg = warehouse.pipeline_config()
    source = context.partition_key
    spikes = unpack_spikes(spike_trains)
    res = build_reservoir(cfg, spikes.shape[2], source, "cpu")
    st = build_state(source, cfg, source_seed(cfg.seed, source), INPUT_NAMES, fusion_model, res,
                     reservoir_states["final_state"], series["timestamp"].to_numpy(), series["value"].to_numpy(),
                     spikes, reservoir_states["states"], quantum_summary(feature_selection["result"]))
    return Output(st, metadata={"rows_seen": st.n_rows, "model_version": st.model_version,
                                "values_tail": len(st.values), "spike_tail_steps": len(st.spikes),
                                "use": MetadataValue.md(f"`nq predict --source {source} --values v1,v2,...`")})


@asset(partitions_def=source_partitions, group_name="fusion", pool=DUCKDB_POOL)
def predictions(context: AssetExecutionContext, fusion_model: dict, features: pd.DataFrame, patterns: pd.DataFrame,
                reservoir_states: dict, feature_selection: dict) -> Output[pd.DataFrame]:
    """One record per (source, time) in the shape of DESIGN.md section 6."""
    source = context.partition_key
    f = fusion_model["fused"]
    rows = f["row"].to_numpy()
    ts = pd.to_datetime(features["timestamp"]).reset_index(drop=True)
    step_ms = float(ts.diff().dt.total_seconds().median() * 1000) if len(ts) > 1 else 0.0
    states = reservoir_states["states"]
    quantum = json.dumps(quantum_summary(feature_selection["result"]))
    pat = patterns[list(PATTERN_NAMES)].to_numpy()
    neuro = [json.dumps({"patterns": dict(zip(PATTERN_NAMES, np.round(pat[r], 4).tolist(), strict=True)),
                         "spike_analysis": {"spike_rate": round(float(features["spike_rate"].iloc[r]), 6)},
                         "reservoir_state": {"mean": round(float(states[r].mean()), 6),
                                             "norm": round(float(np.linalg.norm(states[r])), 6)}}) for r in rows]
    df = pd.DataFrame({
        "prediction_id": [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}/{ts.iloc[r].isoformat()}/{fusion_model['model_version']}"))
                          for r in rows],
        "source": source, "timestamp": ts.iloc[rows].to_numpy(),
        "direction": [CLASS_NAMES[int(d)] for d in f["direction"]], "confidence": f["confidence"].to_numpy(),
        "magnitude": np.abs(f["pred_change"].to_numpy()), "predicted_change": f["pred_change"].to_numpy(),
        "time_horizon_ms": step_ms * fusion_model["config"]["horizon"],
        "processing_time_ms": fusion_model["per_prediction_ms"], "model_version": fusion_model["model_version"],
        "config_version": fusion_model["config_version"], "train_end": ts.iloc[f["train_end"].to_numpy()].to_numpy(),
        "neuromorphic_results": neuro, "quantum_results": quantum,
    })
    counts = df["direction"].value_counts()
    return Output(df, metadata=table_metadata(df, f"{len(df)} walk-forward predictions; directions: "
                                              + ", ".join(f"{k} {v}" for k, v in counts.items())))


@asset(partitions_def=source_partitions, group_name="validation", deps=[predictions], kinds={"html"})
def validation_report(context: AssetExecutionContext, fusion_model: dict, series: pd.DataFrame,
                      warehouse: WarehouseResource) -> Output[pd.DataFrame]:
    """Statistics on realized outcomes (baselines, ablations, Diebold-Mariano, calibration) and the HTML report."""
    source = context.partition_key
    wh = warehouse.warehouse()
    truth = None
    gt = wh.home / "ground_truth" / f"{source}.parquet"
    if gt.exists():
        t = pd.read_parquet(gt)
        if "anomaly" in t.columns and len(t) == len(series):
            truth = t["anomaly"].to_numpy()
    ev = evaluate(fusion_model, truth)
    kind = "market" if source.startswith("market") else "sensor"
    path = write_report(wh.reports / f"{source}.html", source, ev, series["value"].to_numpy(), kind)
    metrics = pd.DataFrame([{**ev["metrics"], "model_version": fusion_model["model_version"], "report": str(path)}])
    wh.write_table("validation_metrics", source, metrics)
    wh.refresh_views()
    md = markdown_summary(source, ev) + "\n\n#### Baselines\n\n" + md_table(ev["baselines"])
    return Output(ev["criteria"], metadata={
        "validation_score": float(ev["metrics"]["score"]), "accuracy": float(ev["metrics"]["accuracy"]),
        "ece": float(ev["metrics"]["ece"]), "p_binom": float(ev["metrics"]["p_binom"]), "report_path": MetadataValue.path(str(path)), "summary": MetadataValue.md(md),
    })
