"""Ingestion of user files (CSV, Parquet, JSON lines) into `raw_ticks`, and the same rules for the prediction
server's ticks. `read` turns bytes into columns, `timestamps` and `rules` check every row (one implementation
of each rule, vectorised), `errors` holds and words what is refused, `ingestor` hashes, de-duplicates, stores,
quarantines and logs a file, `ticks` checks a batch of ticks, `landing` lists the landing zone, `series` reads
a source's rows back as the pipeline's series.
"""

from nq_dagster.ingest.errors import BadRow, FileRejected, IngestFailed
from nq_dagster.ingest.ingestor import INGEST_LOG_DDL, STALE_TEMP_S, FileResult, Ingestor, content_hash
from nq_dagster.ingest.landing import landing_files
from nq_dagster.ingest.limits import IngestLimits
from nq_dagster.ingest.read import SUFFIXES, ReadOptions
from nq_dagster.ingest.series import build_series, primary_column, rows_after
from nq_dagster.ingest.ticks import Tick, TickCheck, check_ticks, fast_validate_ticks

__all__ = [
    "INGEST_LOG_DDL",
    "STALE_TEMP_S",
    "SUFFIXES",
    "BadRow",
    "FileRejected",
    "FileResult",
    "IngestFailed",
    "IngestLimits",
    "Ingestor",
    "ReadOptions",
    "Tick",
    "TickCheck",
    "build_series",
    "check_ticks",
    "content_hash",
    "fast_validate_ticks",
    "landing_files",
    "primary_column",
    "rows_after",
]
