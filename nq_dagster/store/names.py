"""Names a user types (a source, a table) checked against the names that exist, with the nearest ones offered:
a typo is answered with "did you mean", and an empty data directory with the command that fills it."""

from __future__ import annotations

import difflib

# what to run when there is nothing yet (an empty data directory)
FIRST_STEP = "`nq ingest FILE --source NAME` for your own data, or `nq demo` for example data"


def nearest(name: str, known: list[str] | set[str], n: int = 3) -> list[str]:
    """Up to `n` known names closest to `name` (difflib's ratio >= 0.6; a case-insensitive match first)."""
    known = sorted(known)
    same_case = [k for k in known if k.lower() == name.lower() and k != name]
    close = difflib.get_close_matches(name, known, n=n, cutoff=0.6)
    return list(dict.fromkeys(same_case + close))[:n]


def unknown_name(kind: str, name: str, known: list[str] | set[str], fix: str) -> str:
    """One message for an unknown `kind` ("source", "table"): the nearest names, the known ones, the fix."""
    known = sorted(known)
    near = nearest(name, known)
    parts = [f"unknown {kind} {name!r}"]
    if near:
        parts[0] += f"; did you mean {' or '.join(repr(k) for k in near)}?"
    if known:
        shown = ", ".join(known[:30]) + (f" and {len(known) - 30} more" if len(known) > 30 else "")
        parts.append(f"{kind}s here: {shown}.")
    else:
        parts.append(f"there are no {kind}s here yet.")
    parts.append(f"Fix: {fix}")
    return " ".join(parts)
