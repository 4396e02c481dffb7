"""The Ingestor: one file into `raw_ticks`. The file is hashed (by a thread, beside the parse) and skipped
when the same bytes were ingested for the same sources; its rows are checked (`rules.check_file`) and, per
source, compared with the stored rows of its time span (a repeated (source, timestamp) is a bad row); the
accepted rows are written as one Parquet part per (file, source), named by the content hash, so re-ingesting
the same bytes is a no-op and a crash mid-way leaves nothing half-written. A file with a bad row is
quarantined whole (copied or moved to `quarantine/` with a `.reason.txt` naming the file, row, column and fix)
unless `skip_bad_rows` is set; then the good rows are stored and the bad ones recorded in quarantine. Every
outcome is a row of `ingest_log`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from nq_dagster.ingest.errors import BadRow, FileRejected, IngestFailed
from nq_dagster.ingest.limits import IngestLimits, check_size
from nq_dagster.ingest.read import DEFAULT_OPTIONS, ReadOptions
from nq_dagster.ingest.rules import ROWS_NAMED, Checked, check_file
from nq_dagster.store import (
    INGEST_LOG_DDL,
    LIVE_PARTS,
    LOG_PARTITION,
    Warehouse,
    atomic_write_bytes,
    check_source_name,
)
from nq_dagster.store.atomic import remove_stale_temp_files

STALE_TEMP_S = 3600.0  # a temporary file of an atomic write older than this was left by a killed process
PRIMARY_VALUE_NAMES = ("value", "price")  # a file's column so named is the one predicted, without asking
_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class FileResult:
    file: str
    content_hash: str
    status: str  # ingested | skipped-duplicate-file | quarantined | ingested-with-bad-rows
    sources: dict[str, int] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reason: str = ""
    bad_count: int = 0  # rows refused, exactly (`bad_rows` names at most 1,000 per rule and column)
    reason_file: Path | None = None  # quarantine/<file>.reason.txt, when one was written

    @property
    def rows_accepted(self) -> int:
        return sum(self.sources.values())


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_stat = os.stat  # (a test replaces it)


def _file_digest(path: Path) -> str:
    """`content_hash` of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_bytes(path: Path, follow: bool) -> bytes:
    """The file's bytes; `follow=False`: refused with ELOOP when the path is a symbolic link (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW))
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


class Ingestor:
    """Ingests files into the warehouse; one instance per batch of files."""

    def __init__(
        self, warehouse: Warehouse, limits: IngestLimits | None = None, lock_timeout_s: float | None = None
    ):
        self.wh = warehouse.ensure()
        self.limits = limits or IngestLimits()
        # (an explicit value wins over the limits' NQ_INGEST_LOCK_TIMEOUT_S: tests)
        self.lock_timeout_s = self.limits.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        # what an ingest killed mid-write left: temporary parts, artifacts, quarantine copies and reason files
        self.wh.remove_stale_temp_files(STALE_TEMP_S)
        remove_stale_temp_files([self.wh.quarantine], STALE_TEMP_S)

    def _already_ingested(self, digest: str, sources: str) -> bool:
        """The same bytes were ingested before for the same sources (names validated: no quote can occur)."""
        for part in self.wh.table_parts("ingest_log", LOG_PARTITION):
            log = self.wh.read_part(part, columns=["content_hash", "status", "sources"]).to_pandas()
            if (
                (log["content_hash"] == digest)
                & log["status"].str.startswith("ingested")
                & (log["sources"] == sources)
            ).any():
                return True
        return False

    def _stored_timestamps(self, source: str, exclude_part: str, lo: int, hi: int) -> pl.Series:
        """The source's stored timestamps within [lo, hi] (the new file's span, ns since the epoch): parts
        whose footer statistics lie outside it are not read, so appending new rows does not re-read the
        history."""
        out = []
        for p in self.wh.table_parts("raw_ticks", source):
            if p.stem == exclude_part:
                continue
            pmin, pmax, _ = self.wh.part_time_range(p)
            if pmin is not None and (pmax < lo or pmin > hi):
                continue
            ts = pl.from_arrow(self.wh.read_part(p, columns=["timestamp"]))["timestamp"]
            ts = ts.cast(pl.Datetime("us", "UTC"))
            ns = ts.dt.epoch("ns")
            out.append(ts.filter((ns >= lo) & (ns <= hi)))
        return pl.concat(out) if out else pl.Series("timestamp", [], dtype=pl.Datetime("us", "UTC"))

    def ingest_file(
        self,
        path: str | Path,
        source: str | None = None,
        skip_bad_rows: bool = False,
        move: bool = False,
        rename: dict[str, str] | None = None,
        options: ReadOptions | None = None,
    ) -> FileResult:
        """Ingest one file. `move` moves it out of the landing zone afterwards (processed or quarantine);
        `rename` maps the file's column names to the source's ({"reading": "value"}); `options` says how to
        read it (delimiter, timestamp format and zone, value column). Raises IngestFailed (one line, the file
        left in place, nothing stored) when another ingest holds the source's lock or the disk is full."""
        path = Path(path)
        if source is not None:
            check_source_name(source)  # before anything is looked up or stored under it
        try:
            return self._ingest(path, source, skip_bad_rows, move, rename, options or DEFAULT_OPTIONS)
        except TimeoutError as exc:  # a source's lock (store/locks.py words it)
            raise IngestFailed(
                f"{path}: not ingested: {exc}, or raise NQ_INGEST_LOCK_TIMEOUT_S (now "
                f"{self.lock_timeout_s:g} s) to wait longer; nothing of the file was stored"
            ) from None
        except OSError as exc:
            if exc.errno in _FULL:
                raise IngestFailed(
                    f"{path}: not ingested: no space left on the device of {self.wh.home} "
                    f"({exc.strerror}); nothing of the file was stored and it was left where it is. Fix: "
                    "free disk space (or raise the quota) and ingest it again"
                ) from None
            raise

    def _ingest(
        self, path: Path, source, skip_bad_rows: bool, move: bool, rename, options: ReadOptions
    ) -> FileResult:
        landed = path.absolute().is_relative_to(self.wh.landing.absolute())
        if landed and path.is_symlink():
            # a file of the landing zone is never read through a link (a swap after the sensor listed it as a
            # regular file included: the read below refuses to follow one too); left in place for the
            # sensor, which quarantines the link itself
            result = FileResult(file=str(path), content_hash="", status="ingested")
            return self._reject(path, None, result, FileRejected(path, "symlink"), move=False)
        try:
            check_size(path, _stat(path).st_size, self.limits)
        except FileRejected as exc:  # not read: the file itself stays (a copy would be as big)
            result = FileResult(file=str(path), content_hash="", status="ingested")
            return self._reject(path, None, result, exc, move=False)
        with ThreadPoolExecutor(1) as pool:
            # sha256 releases the GIL: a thread reads and hashes the file while this one reads it and parses
            # it (the hash of the bytes read here, after the read, ran beside the parse and slowed it;
            # bench/RESULTS.md has the measured difference); the file's size, modification time and inode
            # before and after tell whether both reads saw the same file, else the bytes parsed here are
            # hashed
            before = _stat(path)
            hashing = pool.submit(_file_digest, path)
            try:
                data = _read_bytes(path, follow=not landed)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                result = FileResult(file=str(path), content_hash="", status="ingested")
                return self._reject(path, None, result, FileRejected(path, "symlink"), move=False)

            def digest_of_data() -> str:
                digest, after = hashing.result(), _stat(path)  # (after both reads)
                moved = any(
                    getattr(before, a) != getattr(after, a)
                    for a in ("st_size", "st_mtime_ns", "st_ino", "st_dev")
                )
                if len(data) != before.st_size or moved:
                    return content_hash(data)
                return digest

            if source is not None:  # a known file for a named source: skipped before it is parsed
                digest = digest_of_data()
                if self._already_ingested(digest, source):
                    return self._skip_duplicate(path, FileResult(str(path), digest, "ingested"), move)
            checked: Checked | FileRejected
            try:
                checked = check_file(path, data, source, rename, options, self.limits)
            except FileRejected as exc:
                checked = exc
            digest = digest_of_data()
        result = FileResult(file=str(path), content_hash=digest, status="ingested")
        part = f"part-{digest[:20]}"
        if isinstance(checked, FileRejected):
            return self._reject(path, data, result, checked, move)
        clean, bad, notes = checked.clean, checked.bad, checked.notes
        # from the check against what is stored to the write: one ingest per source at a time, across
        # processes (the CLI, the daemon's runs), so two overlapping files never both store a (source,
        # timestamp)
        names = sorted(clean["source"].unique().to_list())
        result.bad_count = checked.bad_count
        with self.wh.source_locks(names, self.lock_timeout_s):
            return self._store(
                path,
                data,
                digest,
                part,
                clean,
                names,
                bad,
                notes,
                result,
                skip_bad_rows,
                move,
                options.value_column,
            )

    def _check_columns(self, path: Path, clean: pl.DataFrame, names: list[str]) -> list[str]:
        """A source's value columns are fixed by its first file: a later file with other columns is refused
        (it would be stored as NULLs under the old names plus new columns nothing reads). The first file says
        which column is predicted: its only value column, one named value or price, or the one chosen with
        `--value-column` (stored as `value`); else it is refused with its columns (an Open/High/Low/Close/
        Volume file must not be predicted by a guess). Returns the notes that state the choice."""
        found = sorted(c for c in clean.columns if c not in ("source", "timestamp", "_row"))
        notes = []
        for src in names:
            parts = [q for q in self.wh.table_parts("raw_ticks", src) if not q.stem.startswith(LIVE_PARTS)]
            if not parts:
                named = [c for c in found if c.lower() in PRIMARY_VALUE_NAMES]
                if len(found) > 1 and not named:
                    raise FileRejected(path, "value_column", count=len(found), columns=", ".join(found))
                if len(found) > 1:
                    notes.append(f"source {src!r}: predicts column {named[0]!r} (of {', '.join(found)})")
                continue
            names = pq.read_schema(str(parts[0]), filesystem=self.wh.filesystem).names
            expected = sorted(c for c in names if c not in ("source", "timestamp", "file", "content_hash"))
            if found != expected:
                raise FileRejected(path, "columns_differ", found=found, source=src, expected=expected)
        return notes

    def _reject(
        self, path: Path, data: bytes | None, result: FileResult, exc: FileRejected, move: bool
    ) -> FileResult:
        result.status = "quarantined"
        result.reason = str(exc)
        result.bad_rows = exc.bad_rows
        result.bad_count = exc.bad_count
        self._quarantine(path, data, result, move)
        self._log(result)
        return result

    def _store(
        self,
        path,
        data,
        digest,
        part,
        clean: pl.DataFrame,
        names,
        bad,
        notes,
        result,
        skip_bad_rows,
        move,
        value_column: str | None = None,
    ) -> FileResult:
        try:
            if clean.height and self._already_ingested(digest, ",".join(names)):
                return self._skip_duplicate(path, result, move)
            result.notes += notes
            chosen = self._check_columns(path, clean, names)
            if value_column:
                chosen = [f"predicts column {value_column!r} (stored as 'value')"]
            result.notes += chosen
            # duplicates against what is already stored, for each source in the file
            dup_mask = pl.Series("dup", [], dtype=pl.Boolean)
            for src in names:
                span = clean["timestamp"]
                if len(names) > 1:
                    span = span.filter(clean["source"] == src)
                ns = span.dt.epoch("ns")
                stored = self._stored_timestamps(src, part, ns.min(), ns.max())
                if len(stored):
                    hit = span.is_in(stored)
                else:
                    hit = pl.repeat(False, len(span), dtype=pl.Boolean, eager=True)
                if len(names) == 1:
                    dup_mask = hit
                else:  # back in the frame's row order
                    if not len(dup_mask):
                        dup_mask = pl.zeros(clean.height, dtype=pl.Boolean, eager=True)
                    dup_mask = dup_mask.scatter((clean["source"] == src).arg_true().filter(hit), True)
            if len(dup_mask) and dup_mask.any():  # (a copy of every column otherwise, for nothing)
                result.bad_count += int(dup_mask.sum())
                dups = clean.filter(dup_mask).head(ROWS_NAMED)
                for row, src, ts in zip(
                    dups["_row"].to_list(), dups["source"].to_list(), dups["timestamp"].to_list(), strict=True
                ):
                    bad.append(BadRow(int(row), "timestamp", "stored", str(pd.Timestamp(ts)), source=src))
                clean = clean.filter(~dup_mask)
            bad.sort(key=lambda b: b.row)
            result.bad_rows = bad
            if bad and not skip_bad_rows:
                raise FileRejected(path, "bad_rows", bad, result.bad_count)
            if clean.height == 0:
                raise FileRejected(path, "no_good_rows", bad, result.bad_count)
        except FileRejected as exc:
            return self._reject(path, data, result, exc, move)
        # the stored table, built in Arrow (polars' columns as they are); the file name and hash (and the
        # source, one per part) are constants of the part: dictionary-encoded, written without Arrow's schema,
        # they read back as plain strings
        for src in names:
            rows = clean if len(names) == 1 else clean.filter(pl.col("source") == src)
            table = rows.drop("_row", "source").to_arrow()
            n = table.num_rows

            def const(value: str, n: int = n) -> pa.DictionaryArray:
                # int8 zeros, valid by construction (no bounds pass over a million indices): a quarter of the
                # bytes
                return pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(n, dtype=np.int8)), pa.array([value]), safe=False
                )

            table = table.add_column(0, "source", const(str(src)))
            table = table.append_column("file", const(path.name)).append_column("content_hash", const(digest))
            self._remove_killed_writes(str(src), part)
            self.wh.write_table("raw_ticks", str(src), table, part=part, store_schema=False)
            result.sources[str(src)] = n
            if len(names) > 1:
                # a multi-source file lands one part per source: each is logged as it lands, so a kill before
                # the last leaves a row naming what is stored (ingesting the file again rewrites the same
                # parts by name: nothing is stored twice)
                self._log_part(result, str(src), n, len(names))
        if bad:
            result.status = "ingested-with-bad-rows"
            self._quarantine(path, data, result, move=False, rows_only=True)
        self._finish(path, result, move)
        self._log(result)
        return result

    def _remove_killed_writes(self, source: str, part: str) -> None:
        """A temporary file of this part's own name (`.<part>.parquet.*.tmp`) can only be an ingest's of the
        same bytes into this source, which held the source's lock as this one does now: one that was killed
        while it wrote. Removed at once (the age rule of `remove_stale_temp_files` waits an hour, for writes
        this ingest cannot tell from its own)."""
        directory = self.wh.partition_dir("raw_ticks", source)
        if directory.is_dir():
            for temp in directory.glob(f".{part}.parquet.*.tmp"):
                temp.unlink(missing_ok=True)

    def _skip_duplicate(self, path: Path, result: FileResult, move: bool) -> FileResult:
        result.status = "skipped-duplicate-file"
        result.notes.append("the same content was ingested before for the same source(s); nothing to do")
        self._finish(path, result, move)
        return result

    def _reason_text(self, path: Path, result: FileResult) -> str:
        lines = [
            f"file: {path}",
            f"sha256: {result.content_hash or '(not read)'}",
            f"status: {result.status}",
        ]
        if result.reason:
            lines.append(f"reason: {result.reason}")
        if result.bad_rows:
            listed = min(len(result.bad_rows), ROWS_NAMED)
            more = f"; the first {listed:,} listed" if result.bad_count > listed else ""
            lines.append(f"bad rows ({max(result.bad_count, len(result.bad_rows)):,}{more}):")
            lines += ["  " + b.describe(path.name) for b in result.bad_rows[:ROWS_NAMED]]
        if result.status == "quarantined":
            lines.append(
                "nothing of this file was stored; fix the rows above and ingest it again, "
                "or ingest with --skip-bad-rows to store the good rows only"
            )
        return "\n".join(lines) + "\n"

    def _quarantine(
        self, path: Path, data: bytes | None, result: FileResult, move: bool, rows_only: bool = False
    ) -> None:
        """The file (moved, or copied; a file too big to read is left where it is) and its reason file in
        quarantine/."""
        q = self.wh.quarantine
        q.mkdir(parents=True, exist_ok=True)
        target = q / path.name
        if not rows_only and (data is not None or move):
            if target.exists() and _file_digest(target) != result.content_hash:
                target = q / f"{path.stem}.{(result.content_hash or os.urandom(4).hex())[:8]}{path.suffix}"
            if move:
                shutil.move(str(path), target)
            else:
                atomic_write_bytes(target, data)
        result.reason_file = q / f"{target.name}.reason.txt"
        atomic_write_bytes(result.reason_file, self._reason_text(path, result).encode())

    def _finish(self, path: Path, result: FileResult, move: bool) -> None:
        if move and path.exists():
            inside = path.is_relative_to(self.wh.landing)
            rel = path.relative_to(self.wh.landing) if inside else Path(path.name)
            target = self.wh.processed / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)

    def _log(self, result: FileResult) -> None:
        self._log_row(
            result,
            ",".join(sorted(result.sources)),
            result.rows_accepted,
            result.bad_count,
            result.status,
            result.reason,
        )

    def _log_part(self, result: FileResult, source: str, rows: int, of: int) -> None:
        done = len(result.sources)
        self._log_row(
            result, source, rows, 0, "stored-part", f"source {done} of {of} of a multi-source file stored"
        )

    def _log_row(self, result: FileResult, sources: str, rows: int, rejected: int, status: str, reason: str):
        row = pd.DataFrame(
            [
                {
                    "content_hash": result.content_hash,
                    "file": result.file,
                    "sources": sources,
                    "rows_accepted": rows,
                    "rows_rejected": rejected,
                    "status": status,
                    "reason": reason,
                    "ingested_at": datetime.now(UTC),
                }
            ]
        )
        self.wh.append_rows("ingest_log", row, INGEST_LOG_DDL)
