"""CUDA path check (issue 3): the same results on CUDA as on CPU, and the speed-up.

Needs only numpy and torch (no dagster), so it runs on a bare GPU machine:
    PYTHONPATH=. python3 bench/gpu_check.py [out.json]
Checks, each printed with its figure:
- encoders: all four give bit-identical spikes on CPU and CUDA (counter-based random numbers);
- esn reservoir: CUDA features equal CPU features within float32 / float64 tolerance;
- lif reservoir (float64): the spike-filtered features agree (thresholds make float32 chaos-sensitive);
- streaming on CUDA: T steps at once equals T1 then T2 steps;
- speed: reservoir steps/s on CPU and CUDA for 1, 64 and 1024 sources, sizes 500 and 1000; encoders' time.
"""

import json
import sys
import time

import torch

from nq_dagster.neuromorphic.encoders import ENCODERS, encode
from nq_dagster.neuromorphic.reservoir import Reservoir


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 3) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> dict:
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    out: dict = {
        "cuda": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu only",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "checks": {},
        "speed": {},
    }
    print(json.dumps({k: out[k] for k in ("cuda", "device_name", "torch", "cpu_threads")}))
    checks = out["checks"]

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 400, 3, generator=g)
    for m in ENCODERS:
        a = encode(x, m, device="cpu")
        b = encode(x.to(dev), m, device=dev).cpu()
        checks[f"encoder_{m}_identical"] = bool(torch.equal(a, b))
        checks[f"encoder_{m}_spikes"] = int(a.sum())

    u = torch.rand(8, 500, 3, generator=g)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        cpu = Reservoir(3, 500, mode="esn", dtype=dtype, device="cpu", seed=1)
        gpu = Reservoir(3, 500, mode="esn", dtype=dtype, device=dev, seed=1)
        fa, _ = cpu.run(u.to(dtype))
        fb, _ = gpu.run(u.to(dtype).to(dev))
        diff = float((fa - fb.cpu()).abs().max())
        checks[f"esn_{str(dtype)[6:]}_max_abs_diff"] = diff
        checks[f"esn_{str(dtype)[6:]}_within_{tol:g}"] = diff <= tol
    cpu = Reservoir(3, 500, mode="lif", dtype=torch.float64, device="cpu", seed=1)
    gpu = Reservoir(3, 500, mode="lif", dtype=torch.float64, device=dev, seed=1)
    fa, _ = cpu.run(u.double())
    fb, _ = gpu.run(u.double().to(dev))
    d = (fa - fb.cpu()).abs()
    checks["lif_float64_max_abs_diff"] = float(d.max())
    checks["lif_float64_share_entries_differing_1e-9"] = float((d > 1e-9).double().mean())
    full, _ = gpu.run(u.double().to(dev))
    f1, s1 = gpu.run(u.double()[:, :200].to(dev))
    f2, _ = gpu.run(u.double()[:, 200:].to(dev), s1)
    checks["cuda_chunked_equals_whole_max_abs_diff"] = float((torch.cat([f1, f2], 1) - full).abs().max())
    for k, v in checks.items():
        print(f"check {k}: {v}")

    speed = out["speed"]
    for size in (500, 1000):
        for batch in (1, 64, 1024):
            T = 400 if batch <= 64 else 100
            ub = torch.rand(batch, T, 3, generator=g)
            row = {}
            for d_ in ["cpu", "cuda"] if cuda else ["cpu"]:
                r = Reservoir(3, size, dtype=torch.float32, device=d_, seed=0)
                ud = ub.to(d_)
                t = timed(lambda r=r, ud=ud: r.run(ud), d_)
                row[d_] = batch * T / t
            speed[f"esn size {size} batch {batch} steps/s"] = row
            print(
                f"esn size {size} batch {batch}: "
                + ", ".join(f"{k} {v:,.0f} steps/s" for k, v in row.items())
                + (f", CUDA/CPU {row['cuda'] / row['cpu']:.1f}x" if cuda else "")
            )
    xe = torch.rand(64, 400, 3, generator=g)
    for m in ENCODERS:
        row = {}
        for d_ in ["cpu", "cuda"] if cuda else ["cpu"]:
            xd = xe.to(d_)
            row[d_] = timed(lambda m=m, xd=xd, d_=d_: encode(xd, m, device=d_), d_, repeat=2)
        speed[f"encoder {m} 64x400x25x1000 seconds"] = row
        print(
            f"encoder {m} (64 sources x 400 steps x 25 bins x 1000 neurons): "
            + ", ".join(f"{k} {v:.3f} s" for k, v in row.items())
            + (f", CUDA/CPU speed-up {row['cpu'] / row['cuda']:.1f}x" if cuda else "")
        )
    if cuda:
        a = torch.randn(8192, 8192, device="cuda")
        t = timed(lambda: a @ a, "cuda")
        out["cuda_fp32_matmul_tflops"] = 2 * 8192**3 / t / 1e12
        print(f"cuda fp32 matmul 8192^3: {out['cuda_fp32_matmul_tflops']:.1f} TFLOP/s")
    ok = all(v for k, v in checks.items() if "identical" in k or "within" in k)
    out["all_equal_within_tolerance"] = ok
    print("ALL CHECKS PASS" if ok else "SOME CHECKS FAIL")
    return out


if __name__ == "__main__":
    result = main()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=1)
