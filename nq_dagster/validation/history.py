"""Each source's validation score over time: one point per trained model version, the figures of its
validation report (score, accuracy, held-out predictions, verdict) and what the promotion gate decided for it.

`validation_report` records a point each time it runs (`record`); a second report of the same version (the
report re-materialized alone) replaces that version's point, so a trend has one point per model version.
`trend` is what the server's `GET /api/v1/validation/history` and the dashboard's score chart show: the points
oldest first, each with its status from the `model_versions` registry (`promotion.versions_table`'s meaning:
current, promoted, rejected). A data directory trained before these points were kept has only its latest
report (`validation_metrics`): that one point is returned, marked `"recorded": false`.
"""

from __future__ import annotations

import pandas as pd

from nq_dagster.validation import promotion

HISTORY = "validation_history"  # artifact name: {"points": [point, ...]} per source, oldest first
KEEP = 500  # points kept per source (a daily training: over a year)


def points(wh, source: str) -> list[dict]:
    """The source's recorded points, oldest first ([] before the first)."""
    if not wh.has_artifact(HISTORY, source):
        return []
    return list(wh.load_artifact(HISTORY, source).get("points", []))


def record(wh, source: str, metrics: dict, model_version: str) -> dict:
    """Record the figures of a validation report of `model_version` (`metrics`: the report's metrics; a
    version already recorded is replaced in place). Training of a source runs one at a time (the instance's
    tag limit), so there is no concurrent writer. Returns the point."""
    point = {
        "model_version": model_version,
        "validated_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "score": float(metrics["score"]),
        "accuracy": float(metrics["accuracy"]),
        "predictions": int(metrics["predictions"]),
        "verdict": str(metrics.get("verdict", "")),
    }
    kept = [p for p in points(wh, source) if p.get("model_version") != model_version]
    wh.save_artifact(HISTORY, source, {"points": [*kept, point][-KEEP:]})
    return point


def trend(wh, source: str) -> list[dict]:
    """The points of `source`, oldest first, each with `status` (current: the version served now; promoted:
    served before; rejected: kept out by the gate; unrecorded: the gate has no decision for it) and `recorded`
    (False for the single point read from `validation_metrics` of a directory trained before points were
    kept)."""
    import nq_dagster.codecs  # noqa: F401  (the serving state read for `current` is a registered engine type)

    pts = points(wh, source)
    if not pts and not wh.table_parts("validation_metrics", source):
        return []  # never validated (a source still loading rows, a copy of a state): nothing more to read
    table = promotion.versions_table(wh, [source])
    # a version decided twice (serving_state re-materialized alone): its last decision
    rows = (
        table.drop_duplicates("model_version", keep="last").set_index("model_version").to_dict("index")
        if len(table)
        else {}
    )
    recorded = True
    if not pts and wh.table_parts("validation_metrics", source):
        m = wh.read_table("validation_metrics", source).iloc[-1]
        version = str(m["model_version"])
        # no time of its report was kept: the gate's decision on that version (the same training), else the
        # time the served state was written
        when = (rows.get(version) or {}).get("decided_at") or pd.Timestamp(
            wh.artifact_mtime_ns("serving_state", source), tz="UTC"
        ).isoformat()
        pts = [
            {
                "model_version": version,
                "validated_at": when,
                "score": float(m["score"]),
                "accuracy": float(m["accuracy"]),
                "predictions": int(m["predictions"]),
                "verdict": str(m.get("verdict", "")),
            }
        ]
        recorded = False
    return [
        {
            **p,
            "status": (rows.get(p["model_version"]) or {}).get("status", "unrecorded"),
            "recorded": recorded,
        }
        for p in pts
    ]
