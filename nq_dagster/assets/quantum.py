"""`feature_selection` (per source) and `portfolio` (across sources): QUBOs solved on n-qubit state
vectors."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, AutomationCondition, MetadataValue, Output, asset

from nq_dagster.assets.automation import TRAINING_AUTOMATION
from nq_dagster.assets.common import CODE_VERSIONS, OWNERS, SETTINGS, TAGS, md_table, source_asset
from nq_dagster.deployment import k8s_op_tags
from nq_dagster.resources import WarehouseResource


@source_asset("quantum", {"scipy"}, TRAINING_AUTOMATION, op_tags=k8s_op_tags("quantum", SETTINGS))
def feature_selection(
    context: AssetExecutionContext, features: pd.DataFrame, warehouse: WarehouseResource
) -> Output[dict]:
    """Choose `select_k` fusion features by a relevance-minus-redundancy QUBO on the first training window
    only."""
    from nq_dagster.fusion.pipeline import candidate_columns
    from nq_dagster.fusion.walkforward import make_targets, schedule_for
    from nq_dagster.quantum.qubo import selection_qubo, solve_qubo

    cfg = warehouse.pipeline_config()
    targets = make_targets(features["value"].to_numpy(), cfg.horizon, cfg.hold_band, cfg.feature_window)
    first = schedule_for(len(features), cfg).train_min  # the first prediction row (scales with the series)
    train = slice(0, first - cfg.horizon)  # rows whose targets are known before the first prediction
    cands = candidate_columns(features)
    F = features[cands].iloc[train]
    y = targets["change"].iloc[train]
    rel = F.corrwith(y, method="spearman").abs().fillna(0.0)
    # more candidates than qubits: keep the most relevant qubit_count (stated in the metadata)
    pool = list(rel.sort_values(ascending=False).index[: cfg.qubit_count])
    red = F[pool].corr(method="spearman").abs().fillna(0.0).to_numpy()
    Q, h = selection_qubo(rel[pool].to_numpy(), red, min(cfg.select_k, len(pool)))
    res = solve_qubo(Q, h, evolution_time=cfg.evolution_time, energy_tolerance=cfg.energy_tolerance)
    chosen = [c for c, b in zip(pool, res.x, strict=True) if b]
    table = pd.DataFrame(
        {"feature": pool, "relevance": rel[pool].to_numpy(), "chosen": [bool(b) for b in res.x]}
    )
    value = {"selected": chosen, "pool": pool, "result": res.as_dict(), "config_version": cfg.version}
    return Output(
        value,
        metadata={
            "selected": MetadataValue.json(chosen),
            "qubits": len(pool),
            "energy": float(res.energy),
            **res.diagnostics(),
            "summary": MetadataValue.md(
                f"Relevance = |Spearman| with the {cfg.horizon}-step change on the first "
                f"{first - cfg.horizon} rows; candidates above {cfg.qubit_count} qubits "
                "are cut by relevance.\n\n" + md_table(table)
            ),
        },
    )


# portfolio follows new predictions: requested when any source's `predictions` were materialized since it last
# ran, unless a run of it or of its inputs is in progress (Dagster's `eager`, without its "no input partition
# missing" clause: a new source still ingesting must not hold back the others)
PORTFOLIO_AUTOMATION = (
    AutomationCondition.any_deps_updated().since_last_handled()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("after new predictions")


@asset(
    code_version=CODE_VERSIONS["portfolio"],
    deps=["predictions"],
    group_name="quantum",
    kinds={"scipy"},
    op_tags=k8s_op_tags("quantum", SETTINGS),
    owners=OWNERS,
    tags=TAGS,
    automation_condition=PORTFOLIO_AUTOMATION,
)
def portfolio(context: AssetExecutionContext, warehouse: WarehouseResource) -> Output[pd.DataFrame]:
    """Choose a subset of market sources: predicted edge minus risk (covariance of realized returns), with a
    cardinality penalty; solved as a QUBO with one qubit per source.

    The predicted edge of a source is a score, not a return forecast: the mean of direction (+1/-1/0) times
    confidence over its last 50 predictions, times the standard deviation of its realized returns."""
    from nq_dagster.quantum.portfolio_check import out_of_sample
    from nq_dagster.quantum.qubo import portfolio_qubo, solve_qubo

    cfg = warehouse.pipeline_config()
    wh = warehouse.warehouse()
    markets = [s for s in wh.sources("predictions") if s.startswith("market")]
    sources = markets if len(markets) >= 2 else wh.sources("predictions")
    if len(sources) < 2:
        return Output(
            pd.DataFrame(columns=["source", "predicted_edge", "volatility", "chosen"]),
            metadata={
                "summary": MetadataValue.md(
                    f"No portfolio: it needs predictions for at least two sources; there are {len(sources)}."
                )
            },
        )
    mu, rets, preds = [], [], []
    for s in sources:
        p = wh.read_table("predictions", s).sort_values("timestamp")
        ser = wh.read_table("series", s).set_index("timestamp")["value"]
        r = ser.pct_change().replace([np.inf, -np.inf], np.nan).dropna()
        rets.append(r)
        preds.append(p)
        mu.append(_edge(p, r))
    n_common = min(len(r) for r in rets)  # the most recent common number of steps, aligned by position
    cov = np.cov(np.vstack([r.to_numpy()[-n_common:] for r in rets]))
    mu = np.array(mu)
    k = max(1, len(sources) // 2)
    Qp, h = portfolio_qubo(mu, cov, k=k)
    res = solve_qubo(Qp, h, evolution_time=cfg.evolution_time, energy_tolerance=cfg.energy_tolerance)
    df = pd.DataFrame(
        {
            "source": sources,
            "predicted_edge": mu,
            "volatility": np.sqrt(np.diag(cov)),
            "chosen": res.x.astype(bool),
        }
    )
    # out of sample: chosen with the first 70 % of the common steps (edge from the predictions before them),
    # held over the last 30 %
    cut = int(n_common * 0.7)
    before = [
        _edge(p[p["timestamp"] < r.index[-n_common:][cut]], r.iloc[-n_common:].iloc[:cut])
        for p, r in zip(preds, rets, strict=True)
    ]
    try:
        check = out_of_sample(
            np.column_stack([r.to_numpy()[-n_common:] for r in rets]),
            np.nan_to_num(np.array(before)),
            k,
            evolution_time=cfg.evolution_time,
            energy_tolerance=cfg.energy_tolerance,
        )
        check_md = md_table(check)
    except ValueError as exc:
        check, check_md = None, f"not run: {exc}"
    return Output(
        df,
        metadata={
            "chosen": MetadataValue.json([s for s, b in zip(sources, res.x, strict=True) if b]),
            "energy": float(res.energy),
            **res.diagnostics(),
            "summary": MetadataValue.md(
                md_table(df)
                + "\n\n#### Out of sample (chosen on the first 70 % of the common steps, held over the last "
                "30 %; realized return and volatility per step, equal weights within each portfolio)\n\n"
                + check_md
            ),
            **({"out_of_sample": MetadataValue.json(check.to_dict("records"))} if check is not None else {}),
        },
    )


def _edge(preds: pd.DataFrame, returns: pd.Series) -> float:
    """A source's predicted edge: the mean of direction (+1/-1/0) times confidence over its last 50
    predictions, times the standard deviation of its realized returns (0 without predictions)."""
    last = preds.tail(50)
    if not len(last):
        return 0.0
    sign = last["direction"].map({"up": 1, "down": -1, "hold": 0}).to_numpy()
    return float(np.mean(sign * last["confidence"].to_numpy())) * float(returns.std())
