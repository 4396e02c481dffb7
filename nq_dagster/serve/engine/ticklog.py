"""The tick journal: every new tick and its prediction record, committed before the request is answered.

A segment is one SQLite database, `serve/wal/r<replica>/<microseconds since the epoch>-<n>.sqlite3`, in WAL
mode, with one table

    ticks(seq INTEGER PRIMARY KEY, source TEXT, ts_ns INTEGER, value REAL, stored INTEGER, record TEXT,
          crc INTEGER)

(`ts_ns` ns since the epoch, UTC; `stored`: the tick was already in `raw_ticks`, a row picked up from a file,
only its record is stored; `record` the prediction record's JSON as answered; `crc` the CRC-32 of the other
fields). A batch is one transaction, and its requests are answered after the commit. Why SQLite rather than
lines in a file: a torn write cannot hide what came before it (the WAL's frames carry checksums: recovery
keeps the committed transactions and drops only an unfinished one), a damaged file is found (`PRAGMA
quick_check`) and read around, and the row CRC finds an altered record, so recovery says exactly what it could
not read instead of dropping every later line.

The fsync policy: `always` is `synchronous=FULL` (every commit fsyncs the WAL before the answer); `interval`
is `synchronous=NORMAL` (a commit is a write: a killed process loses nothing, the OS has it) and the flusher
fsyncs the WAL every `fsync_interval_s` (`sync_if_dirty`), which bounds what a machine crash can lose.

Rotation: the worker closes the segment (`close_segment`) and hands it with its connection to the flusher,
which closes the connection (SQLite checkpoints then: off the worker's path), stores the rows in the tables
and deletes the files; the next append opens a new segment. The segments on disk are what the tables do not
hold yet. Segments of the line format this journal replaced (`*.jsonl`) are still read, so an upgrade loses
nothing.

Storage faults fail closed: a failed commit is rolled back, its connection dropped (never written to again),
rows of it that reached the file anyway are deleted before the next write, and `append` raises
`JournalUnavailable` naming the directory and the operating system's reason; the next append tries again, so
the engine recovers by itself once writing works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nq_dagster.serve.engine.work import JournalUnavailable

log = logging.getLogger("nq.serve")

Fsync = Literal["always", "interval"]

SUFFIX = ".sqlite3"
LEGACY_SUFFIX = ".jsonl"  # the line format before the journal: read at recovery, never written
SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's files beside a database
BUSY_S = 5.0  # a reader's lock (WAL recovery at open) is brief: wait for it rather than fail the batch
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # the primary result codes that mean a damaged file
LOST_SHOWN = 20  # lines of `lost` a warning lists; the count is always complete

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ticks (seq INTEGER PRIMARY KEY, source TEXT NOT NULL, "
    "ts_ns INTEGER NOT NULL, value REAL NOT NULL, stored INTEGER NOT NULL, record TEXT NOT NULL, "
    "crc INTEGER NOT NULL)"
)
INSERT = "INSERT INTO ticks (seq, source, ts_ns, value, stored, record, crc) VALUES (?, ?, ?, ?, ?, ?, ?)"
SELECT = "SELECT seq, source, ts_ns, value, stored, record, crc FROM ticks"


@dataclass(slots=True)
class LoggedTick:
    """One row of a segment: the tick (`ts_ns` ns since the epoch, UTC), whether it was already in `raw_ticks`
    (rows picked up from files: only the record is stored), and its prediction record (None when read without
    records)."""

    source: str
    ts_ns: int
    value: float
    stored: bool
    record: dict | None


@dataclass
class SegmentRead:
    """What a segment held: the ticks read, what could not be read (`lost`: one line per row or range), and
    `error` when the file is not a readable journal at all."""

    path: Path
    ticks: list[LoggedTick] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def damaged(self) -> bool:
        return bool(self.lost) or self.error is not None

    def describe(self) -> str:
        """What was lost, for a warning (the first LOST_SHOWN lines)."""
        what = ([self.error] if self.error else []) + self.lost[:LOST_SHOWN]
        more = len(self.lost) - LOST_SHOWN
        return "; ".join(what) + (f"; and {more} more" if more > 0 else "")


def row_crc(source: str, ts_ns: int, value: float, stored: bool, record: str) -> int:
    return zlib.crc32(
        record.encode(), zlib.crc32(f"{source}\x1f{ts_ns}\x1f{value!r}\x1f{int(stored)}".encode())
    )


def side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in SIDE_FILES]


def remove_segment(path: Path) -> None:
    """The database first: a segment without it is gone, never read again with half its rows."""
    for p in (path, *side_files(path)):
        p.unlink(missing_ok=True)


def quarantine_segment(path: Path, reason: str) -> Path:
    """Move a damaged segment (and SQLite's files beside it) to `quarantine/` beside the segments, with a
    `.reason.txt`; returns where it went. Kept, never deleted: what could not be read may still be recovered
    by hand (sqlite3's `.recover`)."""
    dest_dir = path.parent / "quarantine"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    (dest_dir / f"{path.name}.reason.txt").write_text(f"segment: {path}\n{reason}\n")  # first: may fail
    for p in (*side_files(path), path):  # the database last: until then the segment is still found
        if p.exists():
            shutil.move(str(p), str(dest_dir / p.name))
    return dest


def probe_dir(directory: Path) -> str | None:
    """Why a small write in `directory` fails (the operating system's text), or None when it works."""
    probe = directory / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def open_segment_db(path: Path, fsync: Fsync | None, create: bool) -> sqlite3.Connection:
    """A connection to a segment: the writer's (`create`, `fsync` its policy) or a reader's. Autocommit mode:
    transactions are explicit. `check_same_thread` off: the worker writes, the flusher closes (one at a
    time)."""
    uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_S, isolation_level=None, check_same_thread=False)
    try:
        if create:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"{path}: WAL mode refused (journal_mode is {mode!r})")
            conn.execute(f"PRAGMA synchronous={'FULL' if fsync == 'always' else 'NORMAL'}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpointed once, when the flusher closes it
            conn.execute(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def damage(exc: sqlite3.Error) -> bool:
    """Whether an error says the file is damaged or not a journal (then what it holds is read around and the
    file quarantined), rather than that the storage failed now (then the read is tried again later: a segment
    is never quarantined for a disk that was full for a while)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    return "no such table" in str(exc) or "malformed" in str(exc) or "not a database" in str(exc)


def read_segment(path: Path, records: bool = True, check: bool = True) -> SegmentRead:
    """Every tick a segment holds, in order, and what it could not read. `records`: parse the records too;
    `check`: run SQLite's `quick_check` first (its findings go to `lost`). A damaged file never raises: its
    damage is in `lost` / `error`. A storage error (the file cannot be opened or read now) raises, as does a
    missing file (FileNotFoundError: flushed and deleted meanwhile)."""
    if not path.exists():
        raise FileNotFoundError(path)
    if path.suffix == LEGACY_SUFFIX:
        return _read_lines(path, records)
    out = SegmentRead(path)
    conn = open_segment_db(path, None, create=False)
    try:
        if check:
            try:
                found = [r[0] for r in conn.execute("PRAGMA quick_check")]
            except sqlite3.DatabaseError as exc:
                if not damage(exc) or "not a database" in str(exc):
                    raise
                found = [str(exc)]  # (a page it cannot even walk: the rows are still read around it)
            if found != ["ok"]:
                out.lost.append("quick_check: " + "; ".join(found[:5]))
        _read_rows(conn, out, records)
    except sqlite3.DatabaseError as exc:
        if not damage(exc):
            raise
        if "no such table" in str(exc) and path.stat().st_size == 0:
            return out  # created, killed before its first commit: nothing was ever acknowledged from it
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    return out


def _read_rows(conn: sqlite3.Connection, out: SegmentRead, records: bool) -> None:
    """The rows in seq order; once a damaged page stops the scan, each remaining row is looked up by itself,
    so the damage costs only the rows on it (named in `out.lost`, one line per unreadable stretch)."""
    after = 0
    try:
        for row in conn.execute(f"{SELECT} WHERE seq > ? ORDER BY seq", (0,)):
            after = row[0]
            _take(row, out, records)
        return
    except sqlite3.DatabaseError as exc:
        if not damage(exc):
            raise
        scan_error = exc
    try:
        top = conn.execute("SELECT max(seq) FROM ticks").fetchone()[0] or 0
    except sqlite3.DatabaseError as exc:
        if not damage(exc):
            raise
        out.lost.append(f"rows after {after}: {scan_error}")
        return
    bad_from, why = None, scan_error
    for seq in range(after + 1, top + 1):
        try:
            found = conn.execute(f"{SELECT} WHERE seq = ?", (seq,)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not damage(exc):
                raise
            if bad_from is None:
                bad_from, why = seq, exc
            continue
        if bad_from is not None:
            out.lost.append(_stretch(bad_from, seq - 1, why))
            bad_from = None
        for row in found:
            _take(row, out, records)
    if bad_from is not None:
        out.lost.append(_stretch(bad_from, top, why))


def _stretch(first: int, last: int, why: Exception) -> str:
    return f"row {first}: {why}" if first == last else f"rows {first}..{last}: {why}"


def _take(row: tuple, out: SegmentRead, records: bool) -> None:
    seq, s, t, v, stored, rec, crc = row
    if crc != row_crc(s, t, v, bool(stored), rec):
        out.lost.append(f"row {seq}: checksum mismatch (source {s!r}, ts_ns {t})")
        return
    try:
        record = json.loads(rec) if records else None
    except ValueError as exc:
        out.lost.append(f"row {seq}: record is not JSON ({exc})")
        return
    out.ticks.append(LoggedTick(s, t, v, bool(stored), record))


def _read_lines(path: Path, records: bool) -> SegmentRead:
    """A segment of the former line format, one line per tick:
    `{"s": source, "t": ts_ns, "v": value, "stored": ..., "r": record}`. A bad line is named and skipped (what
    follows it is still read); a torn last line (the process died inside a write) was never acknowledged."""
    out = SegmentRead(path)
    lines = path.read_bytes().split(b"\n")  # (a storage error raises: tried again later)
    tail = lines.pop()  # after the last newline: empty, or a torn write
    for i, raw in enumerate(lines, start=1):
        try:
            d = json.loads(raw)
            if not isinstance(d["r"], dict):
                raise TypeError("the record is not an object")
            out.ticks.append(
                LoggedTick(
                    str(d["s"]), int(d["t"]), float(d["v"]), bool(d["stored"]), d["r"] if records else None
                )
            )
        except (ValueError, KeyError, TypeError) as exc:  # (invalid UTF-8 is a ValueError)
            out.lost.append(f"line {i}: {type(exc).__name__}: {str(exc)[:200]}")
    if tail and not tail.startswith(b'{"s": '):
        out.lost.append(f"line {len(lines) + 1}: not a journal line")
    return out


class TickLog:
    """The segments of one replica; one open segment at a time, written by the worker thread only."""

    def __init__(self, wal_dir: Path, fsync: Fsync = "interval"):
        if fsync not in ("always", "interval"):
            raise ValueError("fsync: 'always' or 'interval'")
        self.dir, self.fsync = wal_dir, fsync
        self._seq = 0
        self._conn: sqlite3.Connection | None = None
        self.path: Path | None = None  # the open segment (its connection may be dropped after an error)
        self.sources: set[str] = set()  # sources with ticks committed to the open segment
        self._rows = 0  # rows committed to the open segment: seq of the last one
        self._dirty = False
        self.error: str | None = None  # why the last append failed; None once one succeeds
        self.failures = 0  # batches refused for a storage error since the start

    def segments(self) -> list[Path]:
        """Every segment on disk, oldest first (the open one last)."""
        found = [*self.dir.glob(f"*{SUFFIX}"), *self.dir.glob(f"*{LEGACY_SUFFIX}")]
        return sorted(found, key=lambda p: p.name)

    def remove_orphans(self) -> None:
        """SQLite's files whose segment is gone (a deletion interrupted between the database and them)."""
        for suffix in SIDE_FILES:
            for p in self.dir.glob(f"*{SUFFIX}{suffix}"):
                if not p.with_name(p.name[: -len(suffix)]).exists():
                    p.unlink(missing_ok=True)

    def ticks(self) -> list[LoggedTick]:
        """Every tick the segments on disk hold, oldest segment first (without records)."""
        out = []
        for p in self.segments():
            with contextlib.suppress(FileNotFoundError):  # flushed and deleted meanwhile
                out.extend(read_segment(p, records=False, check=False).ticks)
        return out

    def _writer(self) -> sqlite3.Connection:
        """The open segment's connection, opened (or a new segment created) when there is none."""
        if self._conn is None:
            if self.path is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._seq += 1
                self.path = self.dir / f"{time.time_ns() // 1000:017d}-{self._seq:06d}{SUFFIX}"
                self.sources, self._rows = set(), 0
            conn = open_segment_db(self.path, self.fsync, create=True)
            try:
                # rows of a failed commit that reached the file anyway (a failed fsync after the write) were
                # never acknowledged and the engine moved nothing for them: they go before anything is added
                conn.execute("DELETE FROM ticks WHERE seq > ?", (self._rows,))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def append(self, rows: Iterable[tuple[str, int, float, bool, str]], sources: Iterable[str]) -> None:
        """One batch's ticks (source, ts_ns, value, stored, record JSON) in one transaction; `sources` the
        batch's sources (the segment's states to save). Raises `JournalUnavailable` when the commit fails."""
        try:
            conn = self._writer()
            n = self._rows
            data = []
            for s, t, v, stored, rec in rows:
                n += 1
                data.append((n, s, t, v, int(stored), rec, row_crc(s, t, v, stored, rec)))
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(INSERT, data)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                raise  # a bug, not the storage
            self._drop()
            self.failures += 1
            why = probe_dir(self.dir) or (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            )
            if self.error is None:
                log.error(json.dumps({"event": "journal_unavailable", "dir": str(self.dir), "reason": why}))
            self.error = f"data directory not writable: {self.dir}: {why}"
            raise JournalUnavailable(self.error) from exc
        self._rows = n
        self.sources.update(sources)
        if self.error is not None:
            log.warning(json.dumps({"event": "journal_recovered", "refused_batches": self.failures}))
            self.error = None
        if self.fsync == "interval":
            self._dirty = True

    def _drop(self) -> None:
        """Forget the connection after a failure (closing it may fail too: the file is what counts)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close_segment(self) -> tuple[Path, sqlite3.Connection | None] | None:
        """The open segment and its connection (None after a failure), when it holds ticks, for the flusher:
        closing the connection there checkpoints the WAL off the worker's path. The next append opens a new
        segment. None when nothing was committed since the last rotation."""
        if self.path is None or not self.sources:
            return None
        out = (self.path, self._conn)
        self.path, self._conn, self.sources, self._rows, self._dirty = None, None, set(), 0, False
        return out

    def sync_if_dirty(self) -> bool:
        """The interval fsync (flusher thread): the open segment's WAL, if a commit came since the last one;
        whether it did. The file is opened by name here: no descriptor is shared with the writer."""
        path = self.path
        if not self._dirty or path is None:
            return False
        self._dirty = False
        with contextlib.suppress(OSError):  # rotated meanwhile (closed with a checkpoint), or a storage error
            fsync_file(path.with_name(path.name + "-wal"))
        return True

    def close(self) -> None:
        """At shutdown: close the open segment; one without ticks is removed."""
        self._drop()
        if self.path is not None and not self.sources:
            remove_segment(self.path)
        self.path = None


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
