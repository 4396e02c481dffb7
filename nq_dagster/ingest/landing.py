"""The landing zone as ingest sees it: the files waiting in `landing/` (a supported suffix, not hidden),
grouped by the source each one is for (its sub-directory, else its name) and oldest first, the order in which
the landing sensor and `nq ingest` ingest them.
"""

from __future__ import annotations

import stat
from pathlib import Path

from nq_dagster.ingest.read import SUFFIXES
from nq_dagster.store import Warehouse


def landing_files(wh: Warehouse, source: str | None = None) -> dict[str, list[Path]]:
    """Files waiting in the landing zone, grouped by source.

    A file's source is its sub-directory (`landing/<source>/x.csv`), else its
    stem (`landing/<source>.csv`). Files are returned oldest first. Only regular files count: a symbolic link
    is never followed (it could point at any file of the machine) and a FIFO would block its reader; the
    landing sensor quarantines them with the reason.
    """
    groups: dict[str, list[Path]] = {}
    if not wh.landing.exists():
        return groups
    found = [(p, p.lstat()) for p in wh.landing.rglob("*")]
    for p, st in sorted(found, key=lambda e: (e[1].st_mtime_ns, str(e[0]))):
        if not stat.S_ISREG(st.st_mode) or p.name.startswith(".") or p.suffix.lower() not in SUFFIXES:
            continue
        rel = p.relative_to(wh.landing)
        src = rel.parts[0] if len(rel.parts) > 1 else p.stem
        if source is None or src == source:
            groups.setdefault(src, []).append(p)
    return groups
