"""How a prediction uses the CPU's threads. A tick is many small BLAS/LAPACK calls (32 x 32
eigen-decompositions, vector-matrix products), where BLAS threads only add wake-up latency and fight torch's
pool for the cores, so BLAS runs on one thread (`single_threaded_blas`). A tick of many sources may instead
step fixed blocks of sources on threads of their own (`chunk_of`, `chunk_pool`); the number of such threads is
the caller's explicit choice (`Predictor(threads=...)`, from the settings' `predict_threads`), one by default:
with the work per source mostly short numpy calls under the interpreter lock, one thread whose torch products
use the cores was faster than two chunk threads on two cores (bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

MAX_CHUNKS = 4  # chunk threads at most
MIN_CHUNK_SOURCES = 8  # sources a chunk holds at least

_THREADPOOLS = None
_BLAS = threading.local()


@contextlib.contextmanager
def single_threaded_blas():
    """A context in which numpy's BLAS uses one thread (threadpoolctl, which scikit-learn already depends on).
    A long-lived caller (the server's worker thread) enters it once; calls inside it skip setting the limit
    again, which costs more than a small tick's BLAS calls."""
    global _THREADPOOLS
    if getattr(_BLAS, "on", False):
        yield
        return
    from threadpoolctl import ThreadpoolController

    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    with _THREADPOOLS.limit(limits=1, user_api="blas"):
        _BLAS.on = True
        try:
            yield
        finally:
            _BLAS.on = False


def chunk_of(loaded: list[str], threads: int, device: str) -> dict[str, int]:
    """Each of a config's loaded sources' chunk (1..k, fixed blocks of names, k = `threads` capped at
    MAX_CHUNKS and at one chunk per MIN_CHUNK_SOURCES sources), or {} when they step as one chunk (one thread,
    or a device other than the CPU, where the device is the parallelism)."""
    k = 1 if device != "cpu" else max(1, min(threads, MAX_CHUNKS, len(loaded) // MIN_CHUNK_SOURCES))
    return {n: i * k // len(loaded) + 1 for i, n in enumerate(loaded)} if k > 1 else {}


def chunk_pool() -> ThreadPoolExecutor:
    """Threads for the chunks of a many-source tick. The chunks are the parallelism: torch's own intra-op
    threads inside each chunk thread would only contend for the same cores, so each runs torch on one thread
    (the setting is per thread: the caller's threads keep theirs)."""
    return ThreadPoolExecutor(
        MAX_CHUNKS, thread_name_prefix="nq-predict", initializer=torch.set_num_threads, initargs=(1,)
    )
