"""The server's tick journal (issue 26) against the line log it replaced, on the worker's path only: the cost
per tick of making a batch durable before it is answered, in this process, without a server around it.

`lines`: the former log's append (commit 98e7784, `ticklog.log_line` and one `os.write` of the batch's lines
to a segment opened with O_APPEND), reproduced here; `journal`: `TickLog.append` (one SQLite transaction per
batch, WAL mode). Both under the fsync policy `interval` (the default: no fsync on the worker's path) and
`always` (an fsync per batch). Records are the shape and size the server journals (about 1.1 KB of JSON). The
two are run alternately, `TRIALS` times each, and the minimum and median per tick are reported, so a machine
that other work slows down shows in the spread rather than in one side.

Run: .venv/bin/python -m bench.journal_bench
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from nq_dagster.serve.engine.ticklog import TickLog
from nq_dagster.serve.http.operations import RECORD_EXAMPLE

TRIALS = 5
TICKS = 2048  # per trial and batch size

# the OpenAPI document's example record (a served record's fields and size, about 1.1 KB)
RECORD = dict(RECORD_EXAMPLE)


def batches(batch: int) -> list[list[tuple]]:
    rows = []
    for i in range(TICKS):
        rec = dict(RECORD, confidence=0.5 + i * 1e-6)
        rows.append(
            (
                f"c{i % 32:02d}",
                1_767_600_000_000_000_000 + i * 60_000_000_000,
                100.0 + i,
                False,
                json.dumps(rec),
            )
        )
    return [rows[i : i + batch] for i in range(0, TICKS, batch)]


def lines_append(directory: Path, todo: list[list[tuple]], fsync: str) -> float:
    fd = os.open(directory / "seg.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t = time.perf_counter()
    for b in todo:
        text = "".join(
            f'{{"s": {json.dumps(s)}, "t": {ts}, "v": {v!r}, "stored": {json.dumps(st)}, "r": {rec}}}\n'
            for s, ts, v, st, rec in b
        )
        data = text.encode()
        while data:
            data = data[os.write(fd, data) :]
        if fsync == "always":
            os.fsync(fd)
    elapsed = time.perf_counter() - t
    os.close(fd)
    return elapsed


def journal_append(directory: Path, todo: list[list[tuple]], fsync: str) -> float:
    log = TickLog(directory / "wal", fsync)
    t = time.perf_counter()
    for b in todo:
        log.append(b, {r[0] for r in b})
    elapsed = time.perf_counter() - t
    closed = log.close_segment()
    if closed and closed[1] is not None:
        closed[1].close()
    return elapsed


def main() -> None:
    print(
        "| fsync | batch (ticks) | line log, us per tick: min / median | journal: min / median "
        "| journal / lines (min) |"
    )
    print("|---|---|---|---|---|")
    for fsync in ("interval", "always"):
        for batch in (1, 8, 32):
            todo = batches(batch)
            if fsync == "always" and batch == 1:
                todo = todo[:256]  # an fsync per tick: fewer ticks keep the run short
            n = sum(len(b) for b in todo)
            got: dict[str, list[float]] = {"lines": [], "journal": []}
            for _ in range(TRIALS):
                for name, fn in (("lines", lines_append), ("journal", journal_append)):
                    with tempfile.TemporaryDirectory() as d:
                        got[name].append(fn(Path(d), todo, fsync) / n * 1e6)
            lo, jo = got["lines"], got["journal"]
            print(
                f"| {fsync} | {batch} | {min(lo):.1f} / {statistics.median(lo):.1f} | {min(jo):.1f} / "
                f"{statistics.median(jo):.1f} | {min(jo) / min(lo):.2f} |"
            )


if __name__ == "__main__":
    main()
