"""The versioned pipeline config in the data directory (`config.json` and `config_versions/`), shared by every
replica of the server and by training. The rules of a config (fields, ranges) are `nq_dagster.config`'s; this
module only stores them, atomically."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from nq_dagster.config import SERVICES, ConfigError, PipelineConfig, load_config, validate_overrides
from nq_dagster.store.atomic import atomic_write_text


class ConfigStore:
    """Versioned pipeline config in the data directory, shared by every replica of the server and by training.

    `config.json` is the active config (what the next training uses, as before). Every change made through
    `update` is also kept as `config_versions/<n>-<hash>.json` with its author, time, service and the fields
    it
    changed; old versions stay readable. Both files are written atomically; a version file is written before
    `config.json` points at it, so a crash between the two leaves the previous config active.
    """

    def __init__(self, home: str | Path):
        self.home = Path(home)
        self.dir = self.home / "config_versions"

    def active(self) -> PipelineConfig:
        return load_config(self.home)

    def history(self) -> list[dict]:
        if not self.dir.exists():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue  # a foreign file; versions are written atomically
        return sorted(out, key=lambda v: v["number"])

    def version(self, ref: str) -> dict:
        for v in self.history():
            if ref in (v["hash"], str(v["number"])):
                return v
        raise KeyError(f"no config version {ref!r}; versions: {[v['number'] for v in self.history()]}")

    def update(self, service: str, changes: dict, author: str) -> dict:
        if service not in SERVICES:
            raise ConfigError("service", f"{service!r} is not one of {list(SERVICES)}")
        if not isinstance(changes, dict) or not changes:
            raise ConfigError(service, "expected a non-empty JSON object of field: value")
        foreign = sorted(set(changes) - set(SERVICES[service]))
        if foreign:
            raise ConfigError(
                foreign[0], f"not a field of service {service!r}; its fields are {list(SERVICES[service])}"
            )
        current = self.active().as_dict()
        path = self.home / "config.json"
        overrides = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        overrides.update(validate_overrides({**overrides, **changes}))
        cfg = PipelineConfig(**overrides)
        history = self.history()
        entry = {
            "number": (history[-1]["number"] + 1) if history else 1,
            "hash": cfg.version,
            "service": service,
            "author": author,
            "created_at": datetime.now(UTC).isoformat(),
            "changes": {k: {"from": current[k], "to": cfg.as_dict()[k]} for k in changes},
            "config": cfg.as_dict(),
        }
        atomic_write_text(self.dir / f"{entry['number']:06d}-{cfg.version}.json", json.dumps(entry, indent=1))
        atomic_write_text(path, json.dumps(overrides, indent=1, sort_keys=True))
        return entry

    def describe(self, service: str) -> dict:
        if service not in SERVICES:
            raise ConfigError("service", f"{service!r} is not one of {list(SERVICES)}")
        cfg = self.active()
        values = cfg.as_dict()
        return {
            "service": service,
            "active_version": cfg.version,
            "values": {k: values[k] for k in SERVICES[service]},
            "history": [
                {k: v[k] for k in ("number", "hash", "service", "author", "created_at", "changes")}
                for v in self.history()
            ],
        }
