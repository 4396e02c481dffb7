"""Names a user types (a source, a table) checked against the names that exist, with the nearest ones offered:
a typo is answered with "did you mean", and an empty data directory with the command that fills it; and the
tenants' namespaces of source names."""

from __future__ import annotations

import difflib

from nq_dagster.store.schemas import TENANT_RE, TENANT_SEP

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


# -- tenants' namespaces ------------------------------------------------------------------------------------
# A tenant's source `x` is stored as `<tenant>~x`; the default namespace (keys and tokens without a tenant) is
# today's plain names, so nothing stored before tenants existed moves. `~` is in no name a user types
# (schemas.SOURCE_RE): through the API nobody can create, post to or read a name of another namespace; the
# operator may name one on the command line (`nq ingest FILE --source acme~x`, `nq run --source acme~x`).


def check_tenant_name(tenant: str) -> str:
    """`tenant` if it is a valid tenant name (1-32 letters, digits, '_' or '-'), else a ValueError."""
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise ValueError(
            f"tenant name {tenant!r} is not valid: use 1-32 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return tenant


def stored_source(tenant: str | None, name: str) -> str:
    """The stored name of the source `name` (as a user types it) of `tenant` (None: the default one)."""
    return name if tenant is None else f"{tenant}{TENANT_SEP}{name}"


def split_source(stored: str) -> tuple[str | None, str]:
    """(tenant or None, the name its tenant sees) of a stored source name."""
    tenant, sep, name = stored.partition(TENANT_SEP)
    return (tenant, name) if sep else (None, stored)
