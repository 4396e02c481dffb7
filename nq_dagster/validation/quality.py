"""Data-quality suites (great-expectations 1.x) for `series` and `predictions`.

The suites are code, built into one ephemeral GX context per process; `run_suite` validates a DataFrame
and returns one row per expectation with the offending row numbers, which the Dagster asset checks show.
No dagster import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from nq_dagster.fusion.record import PREDICTION_COLUMNS  # the one schema of the record

# the fix offered for a failed expectation, by suite and expectation type: the remedy must match the failure
# (one fix per suite offered "re-materialize fusion_model" for a duplicate row, issue 28); "{source}" is
# filled in
_RETRAIN = "retrain the source (`nq run --source {source}`), which rewrites training's predictions"
FIXES = {
    "series": {
        "expect_table_columns_to_match_set": "the series needs `timestamp` and `value` columns: ingest a "
        "file with them (`nq ingest FILE --source {source}`; `--rename OLD=value` maps another column)",
        "expect_table_row_count_to_be_between": "the source has no rows: ingest some "
        "(`nq ingest FILE --source {source}`) or `nq demo` for example data",
        "*": "the series is built by `series` from `raw_ticks`; inspect the source's raw rows with "
        "`nq query \"select * from raw_ticks where source = '{source}'\"` and re-ingest a corrected file",
    },
    "predictions": {
        "expect_table_columns_to_match_set": "stored predictions lack this version's record columns "
        "(written by another version): " + _RETRAIN,
        "expect_column_values_to_be_unique": "a prediction id repeats: two writers stored the same records; "
        + _RETRAIN,
        "expect_compound_columns_to_be_unique": "a time of the source was predicted twice (two writers, e.g. "
        'the streaming job and `nq serve` on the same rows); list them with `nq query "select timestamp, '
        "count(*) from predictions where source = '{source}' group by 1 having count(*) > 1\"`",
        "expect_column_pair_values_a_to_be_greater_than_b": "a model saw the target of a row it predicts: a "
        "defect of the model code, not of your data; " + _RETRAIN + " and report the rows listed",
        "*": "the model wrote a value outside the record's rules (a defect, not your data); " + _RETRAIN,
    },
}


def _series_expectations(gx) -> list:
    E = gx.expectations
    return [
        E.ExpectTableColumnsToMatchSet(column_set=["timestamp", "value"], exact_match=False),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="timestamp"),
        E.ExpectColumnValuesToNotBeNull(column="value"),  # NaN counts as null
        E.ExpectColumnValuesToBeBetween(column="value", min_value=-1e300, max_value=1e300),  # finite
        E.ExpectColumnValuesToBeIncreasing(column="timestamp", strictly=True),  # sorted, one row per time
    ]


def _prediction_expectations(gx) -> list:
    E = gx.expectations
    return [
        E.ExpectTableColumnsToMatchSet(column_set=list(PREDICTION_COLUMNS), exact_match=True),
        *[
            E.ExpectColumnValuesToNotBeNull(column=c)
            for c in (
                "prediction_id",
                "source",
                "timestamp",
                "direction",
                "confidence",
                "magnitude",
                "model_version",
            )
        ],
        E.ExpectColumnValuesToBeUnique(column="prediction_id"),
        E.ExpectCompoundColumnsToBeUnique(
            column_list=["source", "timestamp"]
        ),  # one prediction per source and time
        E.ExpectColumnValuesToBeInSet(column="direction", value_set=["up", "down", "hold"]),
        # the largest of three class probabilities lies in [1/3, 1]
        E.ExpectColumnValuesToBeBetween(column="confidence", min_value=1 / 3 - 1e-9, max_value=1.0),
        E.ExpectColumnValuesToBeBetween(column="magnitude", min_value=0.0),
        *[
            E.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0)
            for c in ("p_down", "p_hold", "p_up")
        ],
        # wall time from tick to record (null where no tick triggered the record: training's walk-forward
        # rows)
        E.ExpectColumnValuesToBeBetween(column="processing_time_ms", min_value=0.0),
        # the model never saw the target of the row it predicts
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="timestamp", column_B="train_end", or_equal=False),
    ]


SUITES = {"series": _series_expectations, "predictions": _prediction_expectations}


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # analytics off in the context's own config: no usage statistics leave the machine
    ctx = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            analytics_enabled=False, store_backend_defaults=InMemoryStoreBackendDefaults()
        ),
    )
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ds = ctx.data_sources.add_pandas("nq")
    batches, suites = {}, {}
    for name, build in SUITES.items():
        batches[name] = ds.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for e in build(gx):
            suite.add_expectation(e)
        suites[name] = suite
    return batches, suites


@dataclass
class QualityReport:
    suite: str
    success: bool
    results: pd.DataFrame  # expectation, column, success, unexpected_count, first_bad_rows

    def failures(self) -> pd.DataFrame:
        return self.results[~self.results["success"]]

    def message(self, where: str = "", source: str = "<source>") -> str:
        if self.success:
            return f"{self.suite}{where}: all {len(self.results)} expectations met"
        lines = [f"{self.suite}{where}: {len(self.failures())} of {len(self.results)} expectations failed"]
        fixes: list[str] = []
        for r in self.failures().itertuples():
            rows = f" at rows {r.first_bad_rows}" if r.first_bad_rows else ""
            lines.append(f"- {r.expectation}({r.column}): {r.unexpected_count} bad value(s){rows}")
            table = FIXES[self.suite]
            fix = table.get(r.expectation, table["*"]).format(source=source)
            if fix not in fixes:
                fixes.append(fix)
        lines += [f"fix: {f}" for f in fixes]
        return "\n".join(lines)


def run_suite(name: str, df: pd.DataFrame) -> QualityReport:
    """Validate `df` against suite `name` ('series' or 'predictions'); row numbers are positions in `df`."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    batches, suites = _context()
    frame = df.reset_index(drop=True)
    res = (
        batches[name]
        .get_batch(batch_parameters={"dataframe": frame})
        .validate(
            suites[name], result_format={"result_format": "COMPLETE", "unexpected_index_column_names": None}
        )
    )
    rows = []
    for r in res.results:
        cfg = r.expectation_config
        kw = cfg.kwargs
        column = (
            kw.get("column")
            or ",".join(kw.get("column_list") or [])
            or ",".join(x for x in (kw.get("column_A"), kw.get("column_B")) if x)
            or "(table)"
        )
        idx = (r.result or {}).get("unexpected_index_list") or []
        rows.append(
            {
                "expectation": cfg.type,
                "column": column,
                "success": bool(r.success),
                "unexpected_count": int((r.result or {}).get("unexpected_count") or 0),
                "first_bad_rows": [int(i) for i in idx[:10] if isinstance(i, (int, float))],
            }
        )
    return QualityReport(name, bool(res.success), pd.DataFrame(rows))
