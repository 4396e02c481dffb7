"""The serving engine, one module per responsibility:

- `core.py`: `Engine`, which assembles the parts below and is what the HTTP layer calls;
- `work.py`: the queued work, the validated `Tick`, the `Answer` a request gets, the refusals;
- `worker.py`: the batching worker thread; `validate.py`: the ingest rules over a batch of requests;
- `ticklog.py`: the journal (SQLite) every acknowledged tick is in first; `flusher.py`: the journal into
  the tables;
- `watcher.py`: the models and the thread that swaps new ones in; `pickup.py`: rows that files brought;
- `records.py`: records kept in memory and read back; `outcomes.py`: realized outcomes;
- `ownership.py`: which replica serves which source, and the leases; `restart.py`: recovery from the log.
"""

from nq_dagster.serve.engine.core import Engine
from nq_dagster.serve.engine.ownership import Ownership, stable_hash
from nq_dagster.serve.engine.work import Answer, JournalUnavailable, NoModel, NotOwner, Rejected, Tick

__all__ = [
    "Answer",
    "Engine",
    "JournalUnavailable",
    "NoModel",
    "NotOwner",
    "Ownership",
    "Rejected",
    "Tick",
    "stable_hash",
]
