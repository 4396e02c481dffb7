"""`fusion_model`, `predictions`, `validation_report`: walk-forward fusion and its honest evaluation."""

import time
from typing import Any

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output

from nq_dagster.assets.automation import TRAINING_AUTOMATION
from nq_dagster.assets.common import DAILY, md_table, source_asset, table_metadata
from nq_dagster.resources import WarehouseResource
from nq_dagster.store import LIVE_PARTS


def quantum_summary(q: dict) -> dict:
    """The feature-selection QUBO's results as a record's quantum_results: `converged` is the configured
    annealing run's; `note` says what the answer is (the exact optimum) and what each annealer achieved."""
    g = q.get("schedule")
    return {
        "energy": q["energy"],
        "phase_coherence": q["annealed_coherence"],
        "convergence": {
            "converged": q["converged"],
            "iterations": q["iterations"],
            "annealing_success_probability": q["annealing_success_probability"],
            "method": q["method"],
            "exact_optimum": q["exact"],
            **(
                {
                    "min_spectral_gap": g["min_gap"],
                    "gap_schedule_time": g["evolution_time"],
                    "gap_schedule_success_probability": g["success_probability"],
                    "gap_schedule_reached_target": g["reached"],
                }
                if g
                else {}
            ),
        },
        "note": q.get("note"),
    }


@source_asset("fusion", {"scikit-learn"}, TRAINING_AUTOMATION)
def fusion_model(
    context: AssetExecutionContext,
    features: pd.DataFrame,
    reservoir_states: dict,
    feature_selection: dict,
    warehouse: WarehouseResource,
) -> Output[dict]:
    """Walk-forward fused model (reservoir readout + selected features + recent changes, with every baseline
    as a candidate), its ablations and the baselines; `version` is the last model as streaming and serving use
    it; `promotion` the gate's decision against the version served now (`validation.promotion`), which
    `serving_state` acts on."""
    from nq_dagster.fusion.model import DESIGN_VERSION
    from nq_dagster.fusion.pipeline import run_fusion
    from nq_dagster.fusion.training import model_version_from_fit
    from nq_dagster.validation import promotion

    cfg = warehouse.pipeline_config()
    source = context.partition_key
    current, why_not = served_state(warehouse.warehouse(), source)
    why_not = why_not or promotion.comparable(
        current.model if current else None, cfg.as_dict(), DESIGN_VERSION
    )
    incumbent = (current.model.model, current.stream.season) if current is not None and not why_not else None
    t0 = time.perf_counter()
    out = run_fusion(
        features, reservoir_states["states"], feature_selection["selected"], cfg, source, incumbent
    )
    elapsed = time.perf_counter() - t0
    version = f"{cfg.version}-{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S')}"
    mv = model_version_from_fit(
        context.partition_key,
        cfg,
        version,
        out,
        feature_selection["selected"],
        quantum_summary(feature_selection["result"]),
        features["timestamp"].to_numpy(),
        elapsed,
    )
    out.update(
        {
            "model_version": version,
            "config": cfg.as_dict(),
            "config_version": cfg.version,
            "selected": feature_selection["selected"],
            "fit_seconds": elapsed,
            "version": mv,
        }
    )
    out["promotion"] = decision = promotion.decide(
        out, current.model if current else None, why_not, features["timestamp"].to_numpy(), version
    )
    return Output(
        out,
        metadata={
            "promotion": decision["status"],
            "promotion_reason": decision["reason"],
            "promotion_figures": MetadataValue.json(decision),
            "candidates_chosen": MetadataValue.json(out["candidates"]["chosen"]),
            "baseline_candidate_share": MetadataValue.json(out["candidates"]["baseline_candidate_share"]),
            "season": int(out["season"] or 0),
            "model_version": version,
            "config_version": cfg.version,
            "walk_forward_predictions": len(out["fused"]),
            "refits": int(out["fused"]["model_id"].max() + 1),
            "selected_features": MetadataValue.json(feature_selection["selected"]),
            "fit_seconds": elapsed,
            "trained_rows": mv.trained_rows,
        },
    )


def served_state(wh, source: str) -> tuple[Any, str]:
    """The serving state served now (training's last promoted one), or None and why it cannot be used."""
    if not wh.has_artifact("serving_state", source):
        return None, "no version is served yet"
    try:
        return wh.load_artifact("serving_state", source), ""
    except Exception as exc:  # noqa: BLE001 - an unreadable served state is replaced, and the decision says why
        return None, f"the served state does not load ({type(exc).__name__}: {exc})"


@source_asset("fusion", {"numpy"}, TRAINING_AUTOMATION, freshness_policy=DAILY)
def serving_state(
    context: AssetExecutionContext,
    fusion_model: dict,
    features: pd.DataFrame,
    spike_trains: dict,
    reservoir_states: dict,
    warehouse: WarehouseResource,
) -> Output[Any]:  # a fusion.predictor.ServingState
    """What the streaming job, `nq predict` and the server continue from: the latest promoted model version
    and the source's streaming state after its last row (encoder windows, reservoir state, detector windows).
    A version the promotion gate rejected (`fusion_model`'s `promotion`) is not written here: it is kept as
    `candidate_state`, and the version served now stays; every decision goes to `model_versions`."""
    from nq_dagster.fusion.model import ServingState
    from nq_dagster.fusion.stream import CANDIDATES, from_history
    from nq_dagster.neuromorphic.stages import unpack_spikes
    from nq_dagster.validation import promotion

    cfg = fusion_model["version"].cfg
    stream = from_history(
        features["value"].to_numpy(),
        features["timestamp"].to_numpy(),
        unpack_spikes(spike_trains),
        reservoir_states["states"],
        reservoir_states["final_state"],
        features[list(CANDIDATES)].to_numpy(dtype=float)[-1],
        cfg.feature_window,
        fusion_model["analog"],
        fusion_model.get("season") or 0,
        cfg.horizon,
    )
    iv = fusion_model.get("intervals")
    st = ServingState(
        fusion_model["version"], stream, fusion_model.get("calibration"), iv["state"] if iv else None
    )
    source = context.partition_key
    wh = warehouse.warehouse()
    decision = fusion_model.get("promotion") or {"status": "promoted", "reason": "promoted (no gate ran)"}
    decision = {**decision, "model_version": st.model.model_version}
    promotion.record(wh, source, decision)
    gate = {
        "promotion": decision["status"],
        "promotion_reason": decision["reason"],
        "promotion_figures": MetadataValue.json(decision),
    }
    if decision["status"] == "rejected":
        # the served state stays as it is (the IO manager writes nothing for None): the server's watcher sees
        # no new serving_state; the candidate is kept beside it with the figures
        wh.save_artifact(promotion.CANDIDATE, source, st)
        return Output(None, metadata={**gate, "model_version": decision.get("current_version") or ""})
    return Output(
        st,
        metadata={
            **gate,
            "rows_seen": stream.n_rows,
            "model_version": st.model.model_version,
            "state_bytes": stream.nbytes(),
            "state_bytes_by_part": MetadataValue.json(stream.breakdown()),
            "use": MetadataValue.md(f"`nq predict --source {source} --values v1,v2,...`"),
        },
    )


@source_asset("fusion", {"parquet", "duckdb"}, TRAINING_AUTOMATION)
def predictions(
    context: AssetExecutionContext,
    fusion_model: dict,
    features: pd.DataFrame,
    reservoir_states: dict,
    warehouse: WarehouseResource,
) -> Output[pd.DataFrame]:
    """One record per (source, time) in the shape of DESIGN.md section 6: the walk-forward predictions, built
    by the same record function as streaming and serving, for every time that was not served live.
    `processing_time_ms` is null: no tick triggered these (the fit time is `fit_seconds` of `fusion_model`).
    Records served live by the streaming job or the prediction server (`stream-*` / `serve-*` parts, with
    their processing time) stay."""
    from nq_dagster.fusion.record import build_records, records_frame
    from nq_dagster.neuromorphic.patterns import PATTERN_NAMES

    source = context.partition_key
    f = fusion_model["fused"]
    mv = fusion_model["version"]
    rows = f["row"].to_numpy()
    iv = fusion_model.get("intervals")
    ts = pd.to_datetime(features["timestamp"], utc=True).to_numpy("datetime64[ns]").view(np.int64)
    recs = build_records(
        source,
        ts[rows],
        f[["p_down", "p_hold", "p_up"]].to_numpy(),
        fusion_model["targets"]["band"].to_numpy()[rows],
        f["error_scale"].to_numpy(),
        f["pred_change"].to_numpy(),
        features[list(PATTERN_NAMES)].to_numpy()[rows],
        features["spike_rate"].to_numpy()[rows],
        reservoir_states["states"][rows],
        mv.quantum,
        mv.model_version,
        mv.cfg.version,
        ts[f["train_end"].to_numpy()],
        mv.step_ms * mv.cfg.horizon,
        None,
        iv["half"] if iv else None,
    )
    df = records_frame(recs)
    live = live_prediction_times(warehouse.warehouse(), source)
    served = df["timestamp"].isin(live)
    df = df.loc[~served].reset_index(drop=True)  # one record per time: what was served live stays
    counts = df["direction"].value_counts()
    return Output(
        df,
        metadata=table_metadata(
            df,
            f"{len(df)} walk-forward predictions ({int(served.sum())} times "
            "left to the records served live); directions: "
            + ", ".join(f"{k} {v}" for k, v in counts.items()),
        ),
    )


CRITERIA_COLUMNS = {
    "criterion": "what is tested, on held-out realized outcomes",
    "p_value": "one-sided p-value of the test (empty: a threshold, not a test)",
    "p_holm": "Holm-corrected p-value over the tested criteria",
    "passed": "whether it passed",
    "counted": "whether it counts in the score",
    "figure": "the measured figure and its threshold",
}


def table_value(df: pd.DataFrame, descriptions: dict) -> MetadataValue:
    """A frame as Dagster table metadata, its column schema with descriptions."""
    from dagster import TableColumn, TableRecord, TableSchema

    kinds = {"b": "bool", "i": "int", "u": "int", "f": "float"}
    schema = TableSchema(
        columns=[
            TableColumn(str(c), kinds.get(df[c].dtype.kind, "string"), description=descriptions.get(str(c)))
            for c in df.columns
        ]
    )
    records = [
        TableRecord(
            {str(k): (v if isinstance(v, (bool, int, float)) and v == v else str(v)) for k, v in r.items()}
        )
        for r in df.to_dict("records")
    ]
    return MetadataValue.table(records=records, schema=schema)


def live_prediction_times(wh, source: str) -> pd.Series:
    """Times of the source's predictions served live (streaming job, prediction server)."""
    parts = [p for p in wh.table_parts("predictions", source) if p.stem.startswith(LIVE_PARTS)]
    if not parts:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    return pd.concat([wh.read_part(p, columns=["timestamp"]).to_pandas()["timestamp"] for p in parts])


@source_asset(
    "validation", {"html", "parquet"}, TRAINING_AUTOMATION, deps=[predictions], freshness_policy=DAILY
)
def validation_report(
    context: AssetExecutionContext, fusion_model: dict, series: pd.DataFrame, warehouse: WarehouseResource
) -> Output[pd.DataFrame]:
    """Statistics on realized outcomes (baselines, ablations, Diebold-Mariano, calibration) and the HTML
    report."""
    from nq_dagster.fusion.intervals import coverage_table
    from nq_dagster.validation import history
    from nq_dagster.validation.evaluate import evaluate, evaluate_live
    from nq_dagster.validation.report import markdown_summary, write_report

    source = context.partition_key
    wh = warehouse.warehouse()
    truth = None
    gt = wh.home / "ground_truth" / f"{source}.parquet"
    if gt.exists():
        t = pd.read_parquet(gt)
        if "anomaly" in t.columns and len(t) == len(series):
            truth = t["anomaly"].to_numpy()
    ev = evaluate(fusion_model, truth)
    ev["intervals"] = coverage_table(fusion_model)
    for r in ev["intervals"].to_dict("records"):
        pct = round(100 * r["level"])
        ev["metrics"][f"coverage_{pct}"], ev["metrics"][f"coverage_{pct}_late"] = (
            r["coverage"],
            r["coverage_last_30pct"],
        )
    live_parts = [p for p in wh.table_parts("predictions", source) if p.stem.startswith(LIVE_PARTS)]
    live = pd.concat([wh.read_part(p).to_pandas() for p in live_parts]) if live_parts else None
    targets = fusion_model["targets"]
    horizon = fusion_model["version"].cfg.horizon
    ev["live"] = (
        evaluate_live(live, series["timestamp"], targets, horizon) if len(targets) == len(series) else None
    )
    if ev["live"] and ev["live"].get("realized"):
        lv = ev["live"]
        ev["metrics"].update(
            {
                "live_predictions": lv["realized"],
                "live_accuracy": lv["accuracy"],
                "live_acc_ci_low": lv["ci_low"],
                "live_acc_ci_high": lv["ci_high"],
            }
        )
    kind = "market" if source.startswith("market") else "sensor"
    path, figs = write_report(wh.reports / f"{source}.html", source, ev, series["value"].to_numpy(), kind)
    metrics = pd.DataFrame(
        [{**ev["metrics"], "model_version": fusion_model["model_version"], "report": str(path)}]
    )
    wh.write_table("validation_metrics", source, metrics)
    # one point per model version of the score's trend (the dashboard's chart, /api/v1/validation/history)
    history.record(wh, source, ev["metrics"], fusion_model["model_version"])
    md = markdown_summary(source, ev) + "\n\n#### Baselines\n\n" + md_table(ev["baselines"])
    return Output(
        ev["criteria"],
        metadata={
            "validation_score": float(ev["metrics"]["score"]),
            "accuracy": float(ev["metrics"]["accuracy"]),
            "ece": float(ev["metrics"]["ece"]),
            "p_binom": float(ev["metrics"]["p_binom"]),
            "report_path": MetadataValue.path(str(path)),
            "summary": MetadataValue.md(md),
            "plots": MetadataValue.md(
                "\n\n".join(f"#### {t}\n\n![{t}](data:image/png;base64,{b})" for t, b in figs)
            ),
            "criteria": table_value(ev["criteria"], CRITERIA_COLUMNS),
            "baselines": table_value(ev["baselines"], {}),
        },
    )
