"""The landing zone as ingest sees it: the files waiting in `landing/` (a supported suffix, not hidden),
grouped by the source each one is for (its sub-directory, else its name) and oldest first, the order in which
the landing sensor and `nq ingest` ingest them.
"""

from __future__ import annotations

from pathlib import Path

from nq_dagster.ingest.read import SUFFIXES
from nq_dagster.resources.storage import Warehouse


def landing_files(wh: Warehouse, source: str | None = None) -> dict[str, list[Path]]:
    """Files waiting in the landing zone, grouped by source.

    A file's source is its sub-directory (`landing/<source>/x.csv`), else its
    stem (`landing/<source>.csv`). Files are returned oldest first.
    """
    groups: dict[str, list[Path]] = {}
    if not wh.landing.exists():
        return groups
    for p in sorted(wh.landing.rglob("*"), key=lambda q: (q.stat().st_mtime_ns, str(q))):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in SUFFIXES:
            continue
        rel = p.relative_to(wh.landing)
        src = rel.parts[0] if len(rel.parts) > 1 else p.stem
        if source is None or src == source:
            groups.setdefault(src, []).append(p)
    return groups
