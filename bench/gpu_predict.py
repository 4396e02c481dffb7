"""The one prediction path on CUDA against CPU in the same run (issue 11: "on a GPU machine when one is lent,
report the figure"): 64 sources x one tick per call, batched (`Predictor.advance_many`), from a trained
source's serving state (an `.npz` artifact written by training; no dagster needed on the GPU machine).

    PYTHONPATH=. python3 bench/gpu_predict.py path/to/serving_state.npz [calls]

Prints, per device: predictions/s (median over calls), and for CUDA against CPU on the same ticks: the share
of identical directions and the largest difference of confidence and predicted change.
"""

import sys
import time
from dataclasses import replace

import numpy as np
import torch

import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)
from nq_dagster.fusion.predictor import Predictor
from nq_dagster.store.artifacts import loads


def run(device: str, sv, calls: int, S: int = 64):
    p = Predictor(device=device)
    names = [f"src{i:02d}" for i in range(S)]
    for n in names:
        p.load(replace(sv, model=replace(sv.model, source=n)))
    last = float(sv.stream.values[-1])
    rng = np.random.default_rng(0)
    ticks = last + np.cumsum(0.01 * np.abs(last) * rng.normal(size=(calls, S)), axis=0)
    dur, recs = [], []
    for c in range(calls):
        t = time.perf_counter()
        out = p.advance_many({n: ([ticks[c, i]], None) for i, n in enumerate(names)})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dur.append(time.perf_counter() - t)
        recs.append([out[n][0] for n in names])
    return S / float(np.median(dur[3:])), recs


def main() -> None:
    with open(sys.argv[1], "rb") as fh:
        sv = loads(fh.read(), sys.argv[1])
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    print(
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, cpu threads "
        f"{torch.get_num_threads()}"
    )
    cpu_rate, cpu = run("cpu", sv, calls)
    print(
        f"cpu : {cpu_rate:,.0f} predictions/s (64 sources x 1 tick per call, reservoir "
        f"{sv.model.cfg.reservoir_size})"
    )
    if torch.cuda.is_available():
        gpu_rate, gpu = run("cuda", sv, calls)
        a = [r for rs in cpu for r in rs]
        b = [r for rs in gpu for r in rs]
        same = np.mean([x["direction"] == y["direction"] for x, y in zip(a, b, strict=True)])
        dc = max(abs(x["confidence"] - y["confidence"]) for x, y in zip(a, b, strict=True))
        dp = max(abs(x["predicted_change"] - y["predicted_change"]) for x, y in zip(a, b, strict=True))
        print(f"cuda: {gpu_rate:,.0f} predictions/s; CUDA/CPU {gpu_rate / cpu_rate:.2f}x")
        print(
            f"same direction {same:.4f}; max |confidence diff| {dc:.2e}; max |predicted change diff| {dp:.2e}"
        )


if __name__ == "__main__":
    main()
