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

TRIALS = 5
TICKS = 2048  # per trial and batch size

RECORD = {
    "prediction_id": "67ffaa51-8c8c-549e-86c2-57caef372964",
    "source": "m",
    "timestamp": "2026-01-05T10:00:00+00:00",
    "direction": "up",
    "confidence": 0.5337358623581796,
    "magnitude": 0.004241511169905815,
    "predicted_change": -0.004241511169905815,
    "time_horizon_ms": 60000.0,
    "processing_time_ms": 23.56836199942336,
    "model_version": "20edf19590cf-20261202T154051",
    "config_version": "20edf19590cf",
    "train_end": "2026-01-05T07:29:00+00:00",
    "neuromorphic_results": {
        "patterns": {
            "synchronous": 0.1702,
            "travelling_wave": 0.0967,
            "standing_wave": 0.0646,
            "emergent": 0.1548,
            "rhythmic": 0.0,
            "sparse": 0.8849,
            "burst": 0.1488,
            "chaotic": 0.9714,
        },
        "spike_analysis": {"spike_rate": 0.010833},
        "reservoir_state": {"mean": 0.01651, "norm": 2.576557},
    },
    "quantum_results": {
        "energy": -16.380126152889325,
        "phase_coherence": 0.7858426560481605,
        "convergence": {
            "converged": False,
            "iterations": 50,
            "annealing_success_probability": 0.002187652497011531,
            "method": "state-vector (exact ground state)",
        },
    },
    "probabilities": {"down": 0.415856630562613, "hold": 0.05040750707920754, "up": 0.5337358623581796},
}


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
