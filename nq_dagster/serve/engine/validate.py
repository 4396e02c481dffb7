"""The server's tick validation: every tick of a batch of requests checked by the ingest rules, so a tick the
server accepts is one `nq ingest` would accept, and a refusal is worded as `nq ingest` words it.

Plainly valid ticks take ingest's scalar shortcut (`fast_validate_ticks`); anything else goes through
`check_ticks` in one call for the whole batch, whose structured problems (`row`, `column`, `duplicate_of`) are
mapped back to the request they came from (row numbers local to the request). Two requests of one batch may
carry the same (source, time): the later one is not refused, its tick comes back marked `repost` and is
answered with the first one's record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from nq_dagster.ingest import check_ticks, fast_validate_ticks
from nq_dagster.serve.engine.work import Rejected, Tick


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
            ticks = (Tick(s, t, v) for s, t, v in fast[k : k + len(rows)])
            out.accepted[i] = sorted(ticks, key=_by_source_and_time)
            k += len(rows)
        return out
    return _check_batch(requests, labels)


def _check_batch(requests: Sequence[Sequence[tuple]], labels: Sequence[str]) -> Validated:
    """The whole batch through `ingest.check_ticks`; its structured problems are mapped back to the request
    they came from (row numbers local to the request), each worded once by ingest."""
    owner = [i for i, rows in enumerate(requests) for _ in rows]
    local = [k for rows in requests for k in range(1, len(rows) + 1)]
    check = check_ticks([r for rows in requests for r in rows])
    failed: dict[int, list[str]] = {}
    for b in check.problems:
        i = owner[b.row]
        if b.kind == "duplicate" and owner[b.duplicate_of] != i:
            continue  # the same tick in two requests at once: the later one gets the first one's record
        if b.kind == "duplicate":
            b = replace(b, duplicate_of=local[b.duplicate_of])
        b = replace(b, row=local[b.row], value=b.value[:80])
        failed.setdefault(i, []).append(b.describe(labels[i]))
    out = Validated(rejected={i: Rejected(msgs, "data") for i, msgs in failed.items()})
    accepted: dict[int, list[Tick]] = {i: [] for i in range(len(requests)) if i not in failed}
    first_of = {t.row: t for t in check.clean}
    for t in check.clean:
        if owner[t.row] in accepted:
            accepted[owner[t.row]].append(Tick(t.source, t.ts_ns, t.value))
    for b in check.problems:  # re-posts across requests: answered with the first one's record
        i = owner[b.row]
        if i in accepted and b.kind == "duplicate" and (first := first_of.get(b.duplicate_of)) is not None:
            accepted[i].append(Tick(first.source, first.ts_ns, float("nan"), repost=True))
    for ticks in accepted.values():
        ticks.sort(key=_by_source_and_time)
    out.accepted = accepted
    return out
