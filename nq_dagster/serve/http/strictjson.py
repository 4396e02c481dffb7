"""Reading a client's JSON with bounds (issue 26): a request body or a WebSocket message is parsed by one
strict parser (no `NaN` or `Infinity` literals) and then refused, naming the field, when it nests deeper than
`MAX_DEPTH`, holds an integer of more than `MAX_INT_DIGITS` digits or a number that overflows a float
(`1e400`).

Why here and not in the models: a 10^5-deep array or a 5,000-digit integer failed inside the parser or in the
engine's arithmetic (500, or a batch job left running); the bounds are checked once, before any model sees
the document, so every route and the WebSocket share them.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import from_json

MAX_DEPTH = 32  # nesting of arrays and objects: the API's deepest body is 3
MAX_INT_DIGITS = 20  # an epoch in nanoseconds has 19
_INT_BOUND = 10**MAX_INT_DIGITS


class JsonLimitError(ValueError):
    """A document outside the bounds: `field` the path of the offending part (`data[3]`, `body`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _path(parts: tuple) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _scalar_problem(v: Any) -> str | None:
    if type(v) is int and not -_INT_BOUND < v < _INT_BOUND:
        return f"an integer of {len(str(abs(v)))} digits; at most {MAX_INT_DIGITS} are accepted"
    if type(v) is float and not math.isfinite(v):
        return "a number too large for a 64-bit float (finite numbers up to about 1.8e308 are accepted)"
    return None


def _plain(values: list) -> bool:
    """A list of strings only, or of numbers within the bounds only (nothing in it to look at one by one): a
    1,000-value request is checked by min and max in C instead of a loop in Python."""
    try:
        lo, hi = min(values), max(values)
    except TypeError:  # mixed types, or containers
        return False
    if type(lo) is str and type(hi) is str:
        return True  # strings compare only with strings
    # numbers compare only with numbers (a nested list raised above); bools go the long way
    return type(lo) in (int, float) and type(hi) in (int, float) and -_INT_BOUND < lo and hi < _INT_BOUND


def check(doc: Any) -> None:
    """Raise `JsonLimitError` for the first part of `doc` (parsed JSON) past the bounds."""
    stack: list[tuple[Any, tuple, int]] = [(doc, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for k, v in items:
            t = type(v)
            if t is dict or t is list:
                if depth + 1 >= MAX_DEPTH:
                    raise JsonLimitError(
                        _path((*path, k)), f"{_path((*path, k))}: nested deeper than {MAX_DEPTH} levels"
                    )
                if v and not (t is list and _plain(v)):
                    stack.append((v, (*path, k), depth + 1))
            elif t is int or t is float:
                why = _scalar_problem(v)
                if why is not None:
                    raise JsonLimitError(_path((*path, k)), f"{_path((*path, k))}: {why}")


def loads(raw: bytes | str) -> Any:
    """The document in `raw`, bounded (see the module docstring); `JsonLimitError` for a document past the
    bounds, `ValueError` with the parser's message for one that is not JSON."""
    try:
        doc = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        why = str(exc)
        if "recursion limit" in why:
            raise JsonLimitError("body", f"body: nested deeper than {MAX_DEPTH} levels") from None
        if "number out of range" in why:
            raise JsonLimitError(
                "body", f"body: an integer of more than {MAX_INT_DIGITS} digits ({why})"
            ) from None
        raise
    if type(doc) is dict or type(doc) is list:
        check(doc)
    else:
        why = _scalar_problem(doc)
        if why is not None:
            raise JsonLimitError("body", f"body: {why}")
    return doc
