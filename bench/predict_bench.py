"""Prediction latency, throughput and state size of the one prediction path (issue 11), against a named peer
in the same run: the tail recompute (what streaming did before: the batch graph's vectorised encoder inputs
and pattern detectors recomputed over the history tail their windows need, for every tick).

Builds a temporary warehouse with one demo market source (3000 points, default config) through the whole
graph, then measures, in one process:
1. one tick per call, in process (`Predictor.advance`: encoder windows, encoder, reservoir step, eight
detectors,
   fused model, record): p50 / p95 over 500 ticks, and predictions/s; the peer's per-tick feature recompute.
2. 64 sources x one tick per call, batched (`Predictor.advance_many`): predictions/s. The 64 sources are the
   trained source's model under 64 names (each name has its own encoder seed and reservoir weights). Then the
   same in two processes (`ShardedPredictor(2)`: this process and one worker, 32 sources each, one core each).
3. one source's streaming state in bytes, by part.
4. `nq predict --source market_A --values v` as a user runs it (a new process each time): wall time p50 / p95,
   and the `processing_time_ms` it prints (measured in process).

Run: .venv/bin/python -m bench.predict_bench
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)


def setup(home: Path) -> None:
    from nq_dagster.demo import write_demo
    from nq_dagster.runner import prepare_home, run_pipeline

    wh = prepare_home(str(home))
    write_demo(wh, sources=3, points=3000, seed=0)
    ok = run_pipeline(wh, sources=["market_A"], log=lambda *_: None)
    assert ok.get("market_A"), "pipeline failed"


def tail_recompute_peer(values: np.ndarray, spikes: np.ndarray, states: np.ndarray, cfg) -> float:
    """Seconds per tick of the previous streaming path's feature work: encoder inputs over the values tail
    (22 windows + 8) and the eight detectors over a 64-step spike/state tail, last step only."""
    from nq_dagster.neuromorphic import detect_patterns, encoder_inputs

    tail = 22 * cfg.feature_window + 8
    times = []
    for i in range(60):
        v = values[len(values) - tail - 60 + i : len(values) - 60 + i]
        t = time.perf_counter()
        encoder_inputs(v, cfg.feature_window)
        detect_patterns(spikes[-64:], states[-64:], last=1)
        times.append(time.perf_counter() - t)
    return float(np.median(times[5:]))


def main() -> None:
    home = Path(tempfile.mkdtemp()) / "nq"
    t = time.perf_counter()
    setup(home)
    print(f"setup (demo data + pipeline for market_A, 3000 points): {time.perf_counter() - t:.1f} s")
    env = {**os.environ, "NQ_HOME": str(home)}
    nq = str(Path(sys.executable).parent / "nq")

    from nq_dagster.fusion.predictor import Predictor
    from nq_dagster.neuromorphic.stages import unpack_spikes
    from nq_dagster.store import Warehouse

    wh = Warehouse(home)
    sv = wh.load_artifact("serving_state", "market_A")
    cfg = sv.model.cfg
    last = float(sv.stream.values[-1])
    rng = np.random.default_rng(0)

    # 1. one tick per call
    p = Predictor()
    p.load(sv)
    path = last * np.exp(np.cumsum(0.001 * rng.normal(size=520)))
    lat = []
    for v in path:
        t = time.perf_counter()
        p.advance("market_A", [v])
        lat.append(time.perf_counter() - t)
    lat_ms = 1000 * np.array(lat[20:])
    feats = wh.read_table("features", "market_A")
    peer_s = tail_recompute_peer(
        feats["value"].to_numpy(),
        unpack_spikes(wh.load_artifact("spike_trains", "market_A")),
        wh.load_artifact("reservoir_states", "market_A")["states"],
        cfg,
    )

    # 2. 64 sources, one tick each per call
    many = Predictor()
    names = [f"src{i:02d}" for i in range(64)]
    t = time.perf_counter()
    for n in names:
        many.load(replace(sv, model=replace(sv.model, source=n)))
    load_s = time.perf_counter() - t
    calls = 40
    ticks = last * np.exp(np.cumsum(0.001 * rng.normal(size=(calls, 64)), axis=0))
    dur = []
    for c in range(calls):
        t = time.perf_counter()
        out = many.advance_many({n: ([ticks[c, i]], None) for i, n in enumerate(names)})
        dur.append(time.perf_counter() - t)
        assert sum(len(r) for r in out.values()) == 64
    batch_rate = 64 / np.median(dur[3:])

    # 2b. the same 64 sources shared out between this process and a worker process (`ShardedPredictor`: each
    # shard a `Predictor` on one core); the same ticks, from the same states
    from nq_dagster.fusion.shards import ShardedPredictor

    torch_threads = __import__("torch").get_num_threads()
    with ShardedPredictor(2) as sharded:
        for n in names:
            sharded.load(replace(sv, model=replace(sv.model, source=n)))
        sdur = []
        for c in range(calls):
            t = time.perf_counter()
            out = sharded.advance_many({n: ([ticks[c, i]], None) for i, n in enumerate(names)})
            sdur.append(time.perf_counter() - t)
            assert sum(len(r) for r in out.values()) == 64
    __import__("torch").set_num_threads(torch_threads)
    sharded_rate = 64 / np.median(sdur[3:])

    # 3. state size
    st = p.serving_state("market_A").stream
    parts = st.breakdown()

    # 4. nq predict as a command
    cli, printed = [], []
    for _ in range(10):
        v = last * (1 + 0.001 * rng.normal())
        t = time.perf_counter()
        r = subprocess.run(
            [nq, "predict", "--source", "market_A", "--values", f"{v:.6f}", "--compact"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        cli.append(time.perf_counter() - t)
        printed.append(json.loads(r.stdout)["processing_time_ms"])
    cli_ms = 1000 * np.array(cli)

    print("\n| measure | ours | peer: tail recompute (previous path) | target |")
    print("|---|---|---|---|")
    print(
        f"| one tick in process, p50 / p95 | {np.percentile(lat_ms, 50):.2f} / "
        f"{np.percentile(lat_ms, 95):.2f} ms "
        f"| {1000 * peer_s:.2f} ms for the features alone ({1000 * peer_s / np.percentile(lat_ms, 50):.1f}x "
        "ours "
        "end to end) | p95 <= 5 ms |"
    )
    print(
        f"| one value per call, one source | {1000 / lat_ms.mean():,.0f} predictions/s | "
        f"at most {1 / peer_s:,.0f} /s (features alone) | >= 500 /s |"
    )
    print(
        f"| 64 sources x one tick per call, batched | {batch_rate:,.0f} predictions/s "
        f"({1000 * np.median(dur[3:]):.1f} ms per call), one process | | >= 5,000 /s |"
    )
    print(
        f"| the same, two processes (`ShardedPredictor(2)`: 32 sources each) | {sharded_rate:,.0f} "
        "predictions/s "
        f"({1000 * np.median(sdur[3:]):.1f} ms per call) | | >= 5,000 /s |"
    )
    print(f"| one source's streaming state | {st.nbytes() / 1024:.1f} KiB | | <= 64 KiB |")
    print(
        f"| `nq predict --values v`: processing_time_ms printed, median / max | {np.median(printed):.2f} / "
        f"{np.max(printed):.2f} ms | | < 5 ms |"
    )
    print(
        f"| `nq predict --values v` end to end (new process), p50 / p95 | {np.percentile(cli_ms, 50):.0f} / "
        f"{np.percentile(cli_ms, 95):.0f} ms | | |"
    )
    print(f"\nstate bytes by part: {parts}")
    print(f"loading 64 model versions (reservoirs built from their seeds): {load_s:.1f} s")
    print(
        f"config: neuron_count {cfg.neuron_count}, reservoir_size {cfg.reservoir_size}, window_bins "
        f"{cfg.window_bins}, encoding {cfg.encoding}; CPU threads {os.cpu_count()}, torch threads "
        f"{__import__('torch').get_num_threads()}"
    )


if __name__ == "__main__":
    main()
