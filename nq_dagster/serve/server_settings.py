"""The prediction server's own settings (`ServerSettings`): limits of requests and jobs, the WebSocket queue,
the batch callbacks' allow-list, when a model counts as old. Not the process-wide
`nq_dagster.settings.Settings` (environment variables): these come from `$NQ_HOME/serve/settings.json` and the
command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from nq_dagster.store import Warehouse


@dataclass
class ServerSettings:
    body_limit: int = 1 << 20  # bytes of a request body
    max_points: int = 100_000  # data points of one batch job
    max_values: int = 1_000  # values of one realtime request
    ws_queue: int = 1_000  # messages (one per batch) a WebSocket client may fall behind before it is closed
    callback_hosts: tuple[str, ...] = ()  # hosts batch callbacks may go to (empty: callbacks refused)
    max_model_age_hours: float = 48.0  # status says "degraded" for a source whose model is older
    jobs_per_key: int = 20  # batch jobs a key keeps (serve/jobs/r<k>.sqlite); a new one replaces its oldest
    job_ttl_hours: float = 24.0  # a batch job and its results are deleted this long after it was posted

    @classmethod
    def load(cls, wh: Warehouse, **overrides) -> ServerSettings:
        """Defaults, then `$NQ_HOME/serve/settings.json`, then the command line (`overrides`, None =
        unset)."""
        path = wh.home / "serve" / "settings.json"
        known = sorted(f.name for f in fields(cls))
        values = {}
        if path.exists():
            try:
                values = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"{path}: unknown keys {unknown}; known: {known}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "callback_hosts" in values:
            values["callback_hosts"] = tuple(str(h).lower() for h in values["callback_hosts"])
        return cls(**values)
