"""Run every benchmark in turn (`make bench`); each prints its own tables. Figures go into bench/RESULTS.md by
hand, with the command that produced them."""

import subprocess
import sys

BENCHES = [
    "bench.ingest_bench",
    "bench.reservoir_bench",
    "bench.quantum_bench",
    "bench.predict_bench",
    "bench.serve_bench",
    "bench.serve_replicas_bench",
    "bench.stream_bench",
    "bench.stream_history_bench",
    "bench.train_bench",
    "bench.real_series",
]

if __name__ == "__main__":
    failed = []
    for name in BENCHES:
        print(f"\n# {name}\n", flush=True)
        if subprocess.call([sys.executable, "-m", name, *sys.argv[1:]]) != 0:
            failed.append(name)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")
