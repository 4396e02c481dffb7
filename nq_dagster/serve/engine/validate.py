"""The server's tick validation: every tick of a batch of requests checked by the ingest rules, so a tick the
server accepts is one `nq ingest` would accept, and a refusal is worded as `nq ingest` words it.

Plainly valid ticks take ingest's scalar shortcut (`fast_validate_ticks`); anything else goes through
`validate_frame` in one call for the whole batch, and its bad rows are mapped back to the request they came
from (row numbers local to the request). Two requests of one batch may carry the same (source, time): the
later one is not refused, its tick comes back marked `repost` and is answered with the first one's record.

This adapter still turns ticks into strings for `validate_frame` and reads the duplicate's first row out of
its English message; a structured check from ingest (`check_ticks`, errors with `row`, `column`,
`duplicate_of`) replaces both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nq_dagster.ingest import FileRejected, fast_validate_ticks, validate_frame
from nq_dagster.serve.engine.work import Rejected, Tick

DUPLICATE = "duplicate (source, timestamp) of row "  # validate_frame's wording of a repeated tick


@dataclass
class Validated:
    """Per request (its position in the batch): the accepted ticks sorted by (source, time), or the
    refusal."""

    accepted: dict[int, list[Tick]] = field(default_factory=dict)
    rejected: dict[int, Rejected] = field(default_factory=dict)


def _by_source_and_time(t: Tick) -> tuple[str, int]:
    return t.source, t.ts_ns


def validate_requests(requests: Sequence[Sequence[tuple]], labels: Sequence[str]) -> Validated:
    """`requests[i]`: request i's rows [(source, timestamp, value)] as the client sent them; `labels[i]` how a
    message names it."""
    fast = fast_validate_ticks([r for rows in requests for r in rows])
    if fast is not None:
        out, k = Validated(), 0
        for i, rows in enumerate(requests):
            ticks = (Tick(s, t, v) for s, t, v in fast[k:k + len(rows)])
            out.accepted[i] = sorted(ticks, key=_by_source_and_time)
            k += len(rows)
        return out
    return _validate_frame(requests, labels)


def _validate_frame(requests: Sequence[Sequence[tuple]], labels: Sequence[str]) -> Validated:
    n = sum(len(rows) for rows in requests)
    owner = np.repeat(np.arange(len(requests)), [len(rows) for rows in requests])
    local = np.concatenate([np.arange(1, len(rows) + 1) for rows in requests]) if n else np.zeros(0, int)
    frame = pd.DataFrame({
        "source": [str(r[0]) for rows in requests for r in rows],
        "timestamp": [r[1] if isinstance(r[1], str) else repr(r[1]) for rows in requests for r in rows],
        "value": [repr(r[2]) if isinstance(r[2], float) else str(r[2]) for rows in requests for r in rows],
        "__line": np.arange(n),
    })
    out = Validated()
    try:
        clean, bad, _ = validate_frame(frame, Path("request"), 0, None)
    except FileRejected as exc:  # cannot happen with these columns; fail the batch with the ingest message
        out.rejected = {i: Rejected([str(exc)]) for i in range(len(requests))}
        return out
    failed: dict[int, list[str]] = {}
    for b in bad:
        i = int(owner[b.row])
        problem = b.problem
        if problem.startswith(DUPLICATE):
            first = int(problem.rsplit(" ", 1)[1])
            if owner[first] != i:
                continue  # the same tick in two requests at once: the later one gets the first one's record
            problem = f"{DUPLICATE}{int(local[first])}"
        local_row = type(b)(int(local[b.row]), b.column, b.value[:80], problem, b.fix)
        failed.setdefault(i, []).append(local_row.describe(labels[i]))
    out.rejected = {i: Rejected(msgs, "data") for i, msgs in failed.items()}
    accepted: dict[int, list[Tick]] = {i: [] for i in range(len(requests)) if i not in failed}
    ts = pd.to_datetime(clean["timestamp"], utc=True).to_numpy("datetime64[ns]").view(np.int64)
    kept = set(clean["_row"].tolist())
    for src, t, v, g in zip(clean["source"], ts, clean["value"].to_numpy(dtype=float), clean["_row"],
                            strict=True):
        i = int(owner[g])
        if i in accepted:
            accepted[i].append(Tick(src, int(t), float(v)))
    # rows dropped as duplicates of another request's row come back: their answer is that row's record
    for b in bad:
        i = int(owner[b.row])
        if i in accepted and b.problem.startswith(DUPLICATE) and b.row not in kept:
            first = int(b.problem.rsplit(" ", 1)[1])
            src = str(frame["source"].iloc[b.row])
            t = ts[np.flatnonzero(clean["_row"].to_numpy() == first)]
            if len(t):
                accepted[i].append(Tick(src, int(t[0]), float("nan"), repost=True))
    for ticks in accepted.values():
        ticks.sort(key=_by_source_and_time)
    out.accepted = accepted
    return out
