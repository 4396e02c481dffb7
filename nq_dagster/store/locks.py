"""Exclusive inter-process locks on sources, for a data directory on a local (or mounted) file system: one
lock file per name under `<home>/.locks`, taken with `flock` in name order so two holders never wait on each
other. What they serialise: an ingest's check against the stored rows and its write, a compaction, the
migration of the log tables. A bucket has no such lock (`backends.ObjectStore.lock`): there one writer per
source is the deployment's job.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_locks(directory: Path, names: list[str], timeout_s: float) -> Iterator[None]:
    """Hold the lock of every name in `names` (files `source-<name>.lock` in `directory`), taken in name
    order; raises TimeoutError naming the source when one stays held for `timeout_s` seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for name in sorted(set(names)):
            fh = stack.enter_context(open(directory / f"source-{name}.lock", "a+"))
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"source {name!r} is locked: another ingest or compaction held "
                            f"{directory / f'source-{name}.lock'} for {timeout_s:g} s. Fix: let it finish "
                            "(`nq ingest` or a run of the daemon) and try again"
                        ) from None
                    time.sleep(0.02)
            stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
        yield
