"""Model and state artifacts in a format whose loading cannot run code.

An artifact is one `.npz` file (numpy's zip of `.npy` arrays, read with `allow_pickle=False`): the arrays,
plus one JSON document (`__meta__`, stored as bytes) that describes the structure around them. Only plain
values, numpy arrays, tensors, DataFrames, timestamps and the dataclasses registered here can be stored;
loading builds registered classes from their fields and nothing else, so a tampered file cannot import or call
anything. A file that is not such an artifact (a pickle, a truncated write, another format) is refused with an
`ArtifactError` that names it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from typing import Any

import numpy as np
import pandas as pd

FORMAT = "nq-artifact/1"
_REGISTRY: dict[str, type] = {}


class ArtifactError(ValueError):
    """An artifact file that cannot be read back safely (tampered, truncated, or not an artifact)."""


def register(cls: type) -> type:
    """Allow a dataclass in artifacts (decorator). Loading calls `cls(**fields)` with decoded fields only."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _REGISTRY[cls.__name__] = cls
    return cls


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> str:
        if a.dtype == object:
            raise TypeError(
                "object arrays cannot be stored safely; convert them to numbers, strings or timestamps"
            )
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(a)
        return key

    def enc(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            f = float(v)
            return f if np.isfinite(f) else {"__t": "float", "v": repr(f)}
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                return {"__t": "kvlist", "v": [[self.enc(k), self.enc(x)] for k, x in v.items()]}
            return {"__t": "dict", "v": {k: self.enc(x) for k, x in v.items()}}
        if isinstance(v, (list, tuple)):
            return {"__t": "tuple" if isinstance(v, tuple) else "list", "v": [self.enc(x) for x in v]}
        if isinstance(v, pd.Timestamp):
            return {"__t": "ts", "v": v.isoformat()}
        if isinstance(v, np.datetime64):
            return {"__t": "dt64", "v": str(v)}
        if isinstance(v, np.ndarray):
            if v.dtype == object and v.ndim == 1 and len(v) and all(isinstance(x, pd.Timestamp) for x in v):
                idx = pd.DatetimeIndex(v)  # tz-aware timestamps (as `Series.to_numpy()` gives them)
                tz = str(idx.tz) if idx.tz is not None else None
                naive = idx.tz_convert("UTC").tz_localize(None) if tz else idx
                return {"__t": "nd_ts", "tz": tz, "k": self.array(naive.to_numpy("datetime64[ns]"))}
            return {"__t": "nd", "k": self.array(v)}
        if isinstance(v, pd.Series):
            return {"__t": "series", "name": self.enc(v.name), "v": self._column(v)}
        if isinstance(v, pd.DataFrame):
            return {
                "__t": "df",
                "cols": [self.enc(c) for c in v.columns],
                "v": [self._column(v.iloc[:, i]) for i in range(v.shape[1])],
            }
        if type(v).__module__.startswith("torch"):
            return {"__t": "torch", "k": self.array(v.detach().cpu().numpy())}
        if dataclasses.is_dataclass(v) and type(v).__name__ in _REGISTRY:
            return {
                "__t": "obj",
                "cls": type(v).__name__,
                "v": {f.name: self.enc(getattr(v, f.name)) for f in dataclasses.fields(v)},
            }
        if isinstance(v, slice):
            return {"__t": "slice", "v": [v.start, v.stop, v.step]}
        raise TypeError(
            f"cannot store a {type(v).__module__}.{type(v).__name__} in an artifact; register it "
            "or convert it to arrays"
        )

    def _column(self, s: pd.Series) -> dict:
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            utc = s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
            return {"kind": "dt_tz", "tz": str(s.dtype.tz), "k": self.array(utc)}
        if s.dtype == object:
            vals = s.tolist()
            if all(x is None or isinstance(x, str) for x in vals):
                return {"kind": "str", "v": vals}
            if all(isinstance(x, pd.Timestamp) for x in vals):
                return self._column(pd.to_datetime(s, utc=True))
            return {"kind": "json", "v": [self.enc(x) for x in vals]}
        return {"kind": "nd", "k": self.array(s.to_numpy())}


class _Decoder:
    def __init__(self, arrays: Any, where: str) -> None:
        self.arrays, self.where = arrays, where

    def array(self, key: str) -> np.ndarray:
        try:
            return self.arrays[key]
        except KeyError:
            raise ArtifactError(f"{self.where}: array {key!r} is missing; the file is damaged") from None

    def dec(self, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        t = v.get("__t")
        if t == "float":
            return float(v["v"])
        if t == "dict":
            return {k: self.dec(x) for k, x in v["v"].items()}
        if t == "kvlist":
            return {self.dec(k): self.dec(x) for k, x in v["v"]}
        if t == "list":
            return [self.dec(x) for x in v["v"]]
        if t == "tuple":
            return tuple(self.dec(x) for x in v["v"])
        if t == "ts":
            return pd.Timestamp(v["v"])
        if t == "dt64":
            return np.datetime64(v["v"])
        if t == "nd":
            return self.array(v["k"])
        if t == "nd_ts":
            idx = pd.DatetimeIndex(self.array(v["k"]))
            return (idx.tz_localize("UTC").tz_convert(v["tz"]) if v["tz"] else idx).to_numpy(dtype=object)
        if t == "torch":
            import torch

            return torch.from_numpy(np.array(self.array(v["k"])))
        if t == "series":
            return pd.Series(self._column(v["v"]), name=self.dec(v["name"]))
        if t == "df":
            cols = [self.dec(c) for c in v["cols"]]
            return pd.DataFrame({c: self._column(x) for c, x in zip(cols, v["v"], strict=True)}, columns=cols)
        if t == "slice":
            return slice(*v["v"])
        if t == "obj":
            cls = _REGISTRY.get(v["cls"])
            if cls is None:
                known = (
                    "none registered: the process must import nq_dagster.codecs"
                    if not _REGISTRY
                    else "the file was written by another version or tampered with"
                )
                raise ArtifactError(f"{self.where}: unknown object type {v['cls']!r}; {known}")
            return cls(**{k: self.dec(x) for k, x in v["v"].items()})
        raise ArtifactError(f"{self.where}: unknown entry type {t!r}")

    def _column(self, c: dict) -> Any:
        if c["kind"] == "dt_tz":
            return pd.to_datetime(self.array(c["k"])).tz_localize("UTC").tz_convert(c["tz"])
        if c["kind"] == "str":
            return pd.Series(c["v"], dtype=object)
        if c["kind"] == "json":
            return pd.Series([self.dec(x) for x in c["v"]], dtype=object)
        return self.array(c["k"])


def dumps(obj: Any) -> bytes:
    """The artifact file's bytes."""
    enc = _Encoder()
    meta = {"format": FORMAT, "root": enc.enc(obj)}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **enc.arrays)
    return buf.getvalue()


def loads(data: bytes, where: str = "artifact") -> Any:
    """Read an artifact; never unpickles. Raises ArtifactError naming `where` for anything else."""
    fix = "delete it and re-run training for the source (`nq run --source <source>`)"
    if not data.startswith(b"PK"):
        pickled = data[:1] == b"\x80"
        kind = "a Python pickle, refused (loading it could run code)" if pickled else "not an nq artifact"
        raise ArtifactError(f"{where}: {kind}; {fix}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{where}: damaged or truncated artifact ({exc}); {fix}") from None
    odd = sorted(k for k, a in arrays.items() if not isinstance(a, np.ndarray) or a.dtype == object)
    if odd:  # a member that is not a plain .npy array (numpy hands such members back as raw bytes)
        raise ArtifactError(f"{where}: members {odd} are not plain arrays; {fix}")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where}: artifact without a readable description ({exc!r}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r}; {fix}")
    try:
        return _Decoder(arrays, where).dec(meta["root"])
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: artifact does not match its description ({exc!r}); {fix}") from None
