"""The tick/record log: every new tick and its prediction record, appended before the request is answered.

Segments are `serve/wal/r<replica>/<microseconds since the epoch>-<n>.jsonl`, one JSON line per tick:

    {"s": source, "t": ns since the epoch, "v": value, "stored": already in raw_ticks, "r": the record}

A batch is one `write`, so the operating system keeps it when the process dies (kill -9, OOM); the flusher
fsyncs it every `fsync_interval_s` (or each batch with `fsync="always"`), which bounds what a machine crash
can lose. The worker closes a segment (`close_segment`) and hands it to the flusher, which stores it in the
tables and deletes it; the segments still on disk are what the tables do not hold yet.

The worker thread appends and rotates; the flusher thread only calls `sync_if_dirty`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Fsync = Literal["always", "interval"]


@dataclass(slots=True)
class LoggedTick:
    """One line of a segment: the tick (`ts_ns` ns since the epoch, UTC), whether it was already in
    `raw_ticks` (rows picked up from files: only the record is stored), and its prediction record."""

    source: str
    ts_ns: int
    value: float
    stored: bool
    record: dict


def log_line(source: str, ts_ns: int, value: float, stored: bool, record_json: str) -> str:
    """A segment line, with the record's JSON text as encoded once for the answer too."""
    return (
        f'{{"s": {json.dumps(source)}, "t": {ts_ns}, "v": {value!r}, "stored": {json.dumps(stored)}, '
        f'"r": {record_json}}}'
    )


def read_segment(path: Path) -> list[LoggedTick]:
    ticks = []
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                d = json.loads(raw)
            except json.JSONDecodeError:
                break  # a torn last line (the process died inside a write): never acknowledged
            ticks.append(LoggedTick(d["s"], d["t"], d["v"], d["stored"], d["r"]))
    return ticks


class TickLog:
    """The segments of one replica; one open segment at a time."""

    def __init__(self, wal_dir: Path, fsync: Fsync = "interval"):
        if fsync not in ("always", "interval"):
            raise ValueError("fsync: 'always' or 'interval'")
        self.dir, self.fsync = wal_dir, fsync
        self._seq = 0
        self._fd: int | None = None
        self.path: Path | None = None  # the open segment
        self.sources: set[str] = set()  # sources with ticks in the open segment
        self._dirty = False

    def segments(self) -> list[Path]:
        """Every segment on disk, oldest first (the open one last)."""
        return sorted(self.dir.glob("*.jsonl"))

    def ticks(self) -> list[LoggedTick]:
        """Every tick the segments on disk hold, oldest segment first."""
        return [t for p in self.segments() for t in read_segment(p)]

    def open_segment(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        self.path = self.dir / f"{time.time_ns() // 1000:017d}-{self._seq:06d}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.sources = set()

    def append(self, text: str, sources) -> None:
        """Lines of one batch, in one write; `sources` the batch's sources (the segment's states to save)."""
        data = text.encode()
        while data:  # a regular file takes the whole buffer; the loop only guards against a short write
            n = os.write(self._fd, data)
            data = data[n:]
        self.sources.update(sources)
        if self.fsync == "always":
            os.fsync(self._fd)
        else:
            self._dirty = True

    def close_segment(self) -> Path | None:
        """Fsync and close the open segment when it holds ticks; returns its path (for the flusher), else None
        and the segment stays open."""
        if self._fd is None or not self.sources:
            return None
        fd, self._fd = self._fd, None
        os.fsync(fd)
        os.close(fd)
        return self.path

    def sync_if_dirty(self) -> bool:
        """The interval fsync (flusher thread): the open segment, if anything was written since the last one;
        whether it did."""
        fd = self._fd
        if not self._dirty or fd is None:
            return False
        self._dirty = False
        with contextlib.suppress(OSError):  # the segment may just have been rotated and closed
            os.fsync(fd)
        return True

    def close(self) -> None:
        """At shutdown: close the open segment; an empty one is removed."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self.path and self.path.exists() and self.path.stat().st_size == 0:
            self.path.unlink()
