"""The process's settings: every `NQ_*` variable (and `DAGSTER_DEPLOYMENT`, `DAGSTER_HOME`, the S3
credentials) in one typed object, read once by a composition root (`definitions.py`, `cli.py`, the server's
factory) and passed down. No other module reads `os.environ`, and nothing writes to it: a value the code
needs is a field here.

`Settings.from_env()` validates each value and names the variable in its error; `NQ_SECRETS_DIR` (a Kubernetes
secret mounted as files) fills the S3 and AWS fields that the environment leaves unset. The README's
"Settings" table is generated from `FIELDS` (`nq settings`), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Deployment = Literal["local", "k8s"]
Device = Literal["auto", "cpu", "cuda"]


class SettingsError(ValueError):
    """A variable of the environment that does not parse; the message names it and the valid range."""


class Settings(BaseModel):
    """Every setting of the process, with its variable, default and valid range (see `FIELDS`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # data
    home: Path = Field(Path(".nq"), description="the data directory (landing/, warehouse/, artifacts/, ...)")
    dagster_home: Path | None = Field(
        None, description="the Dagster instance's directory; default NQ_HOME/dagster"
    )
    deployment: Deployment = Field(
        "local", description="resource set: local (in process) or k8s (dagster-k8s)"
    )
    device: Device = Field("auto", description="reservoir device: auto = CUDA when available, else CPU")
    # object storage
    s3_bucket: str = Field(
        "", description="store the warehouse in this bucket (empty: local files under NQ_HOME)"
    )
    s3_prefix: str = Field("nq", description="key prefix inside NQ_S3_BUCKET")
    s3_endpoint: str = Field("", description="S3-compatible endpoint URL (empty: AWS)")
    aws_region: str = Field("us-east-1", description="AWS_REGION (or AWS_DEFAULT_REGION) of the bucket")
    aws_access_key_id: str = Field("", description="AWS_ACCESS_KEY_ID (empty: the SDK's default chain)")
    aws_secret_access_key: str = Field("", repr=False, description="AWS_SECRET_ACCESS_KEY")
    secrets_dir: Path | None = Field(
        None, description="a directory of files named like NQ_S3_* / AWS_* / NQ_SERVE_SHARED_STORE variables"
    )
    # storage maintenance
    compact_parts: int = Field(64, ge=2, le=100_000, description="a source's parts past this are compacted")
    compact_big_rows: int = Field(
        1_000_000, ge=1, description="a part of this many rows is never merged again"
    )
    compact_grace_s: float = Field(60.0, ge=0, le=86_400, description="replaced parts are deleted after this")
    # nq query
    query_timeout_s: float = Field(60.0, gt=0, le=86_400, description="`nq query`: stopped after this long")
    query_memory: str = Field(
        "2GB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="`nq query`: DuckDB memory limit (no spilling to disk)",
    )
    query_max_rows: int = Field(100_000, ge=1, le=100_000_000, description="`nq query`: rows printed at most")
    # ingest: bounds on one file, checked before its rows are built (nq_dagster/ingest/limits.py)
    ingest_max_bytes: int = Field(
        256 * 1024**2,
        ge=1024,
        description="ingest: bytes of one file (a Parquet file's uncompressed bytes too) at most",
    )
    ingest_max_line_bytes: int = Field(
        1024**2, ge=64, description="ingest: bytes of one line of a CSV or JSON-lines file at most"
    )
    ingest_max_columns: int = Field(1000, ge=2, le=100_000, description="ingest: columns of one file at most")
    ingest_max_rows: int = Field(20_000_000, ge=1, description="ingest: rows of one file at most")
    ingest_lock_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="ingest: seconds to wait for a source's lock (another ingest)"
    )
    # the Dagster layer
    sensor_interval: int = Field(3, ge=1, le=3600, description="seconds between landing-sensor ticks")
    settle_seconds: float = Field(0.25, ge=0, le=3600, description="a landed file must be this old (s)")
    max_attempts: int = Field(3, ge=1, le=100, description="failed runs on a file before it is quarantined")
    run_start_timeout_s: float = Field(
        180.0, gt=0, le=86_400, description="a run STARTING longer than this is marked failed"
    )
    min_rows_to_train: int | None = Field(None, ge=2, description="override the rows training needs (tests)")
    train_cron: str = Field("0 3 * * *", description="when the daily training automation may run")
    freshness_seconds: float = Field(300.0, gt=0, description="live predictions older than this are stale")
    training_fresh_hours: float = Field(26.0, gt=0, description="a model older than this is stale")
    gpu_node_selector: str = Field("nq.io/pool=gpu", description="k8s node selector of reservoir steps")
    data_pvc: str = Field("", description="k8s ReadWriteMany claim mounted at NQ_HOME in every step pod")
    # prediction
    predict_threads: int | None = Field(None, ge=1, le=256, description="threads of one predictor call")
    serve_replicas: int = Field(1, ge=1, le=1024, description="replicas of `nq serve` sharing the sources")
    serve_replica: int | None = Field(
        None, ge=0, description="this replica's index (default: hostname ordinal)"
    )
    serve_peers: str = Field("", description="peer URLs, comma-separated, `{i}` expanded per replica")
    serve_processes: int = Field(1, ge=1, le=64, description="prediction processes of one server")
    serve_stream: str = Field("", description="NATS URL the server takes ticks from (`--stream`); empty: off")
    serve_shared_store: str = Field(
        "",
        repr=False,  # its password: checked (and named without it) by serve/shared.check_url
        description="postgresql:// URL of the store the replicas share: one rate limit and cap per key "
        "across replicas, batch jobs any replica answers for (empty: per replica)",
    )
    serve_shared_lease_s: float = Field(
        15.0,
        ge=1,
        le=600,
        description="a replica silent this long in the shared store is dead: its slots and jobs are released",
    )
    serve_torch_threads: int = Field(1, ge=1, le=256, description="torch threads in the server")
    hostname: str = Field("", description="HOSTNAME (a StatefulSet pod's name gives its replica ordinal)")
    serve_cors_origins: str = Field(
        "", description="origins a browser may call the server from, comma-separated (empty: CORS off)"
    )
    serve_metrics_open: bool = Field(
        False, description="`/metrics` without a key (a Prometheus scrape on the cluster network)"
    )
    # OAuth 2.0 bearer tokens (JWT) beside the API keys
    jwt_jwks: str = Field(
        "", description="the identity provider's JWKS: a file path or an https URL (empty: API keys only)"
    )
    jwt_issuer: str = Field("", description="the `iss` a token must carry (required with NQ_JWT_JWKS)")
    jwt_audience: str = Field("", description="the `aud` a token must carry (required with NQ_JWT_JWKS)")
    jwt_leeway_s: float = Field(30.0, ge=0, le=600, description="clock skew allowed on exp / nbf / iat (s)")
    jwt_roles_claim: str = Field(
        "roles", description="claim with the role(s): viewer, developer or admin (dotted path allowed)"
    )
    jwt_tenant_claim: str = Field("tenant", description="claim with the caller's tenant")

    @field_validator("home", "dagster_home", "secrets_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser().absolute()

    @field_validator("gpu_node_selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        if any(len(p.split("=", 1)) != 2 for p in v.split(",") if p.strip()):
            raise ValueError(f"{v!r}: expected key=value[,key=value]")
        return v

    @model_validator(mode="after")
    def _jwt_complete(self) -> Settings:
        if self.jwt_jwks and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError(
                "NQ_JWT_JWKS is set: NQ_JWT_ISSUER and NQ_JWT_AUDIENCE are required too (a token is accepted "
                "only from that issuer, for that audience)"
            )
        return self

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def instance_dir(self) -> Path:
        """DAGSTER_HOME, or NQ_HOME/dagster."""
        return self.dagster_home or self.home / "dagster"

    @property
    def replica_index(self) -> int:
        """NQ_SERVE_REPLICA, else a StatefulSet pod's ordinal (`nq-serve-2` -> 2), else 0."""
        if self.serve_replica is not None:
            return self.serve_replica
        m = re.search(r"-(\d+)$", self.hostname or socket.gethostname())
        return int(m.group(1)) if m else 0

    def node_selector(self) -> dict[str, str]:
        pairs = [p.split("=", 1) for p in self.gpu_node_selector.split(",") if p.strip()]
        return {k.strip(): v.strip() for k, v in pairs}

    def with_home(self, home: str | Path | None) -> Settings:
        """These settings for another data directory (a `--home` flag); DAGSTER_HOME follows unless it was
        set."""
        if home is None or str(home) == "":
            return self
        return self.model_copy(update={"home": Path(home).expanduser().absolute()})

    # -- reading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from an environment (default `os.environ`), each variable validated; an unset or empty
        variable keeps its default."""
        env = dict(os.environ if environ is None else environ)
        secrets = env.get("NQ_SECRETS_DIR", "").strip()
        if secrets and os.path.isdir(secrets):
            # files named like a variable fill it unless the environment sets it (a mounted k8s secret)
            for name in sorted(os.listdir(secrets)):
                # NQ_SERVE_SHARED_STORE: its URL carries the store's password (k8s/serve.yaml mounts it here)
                if name.startswith(("NQ_S3_", "AWS_", "NQ_SERVE_SHARED_STORE")) and not env.get(name):
                    with open(os.path.join(secrets, name), encoding="utf-8") as fh:
                        env[name] = fh.read().strip()
        values: dict[str, str] = {}
        for field, var in FIELDS.items():
            for name in var.split("|"):
                if env.get(name, "").strip() != "":
                    values[field] = env[name].strip()
                    break
        if values.get("deployment") == "k8s" and "home" not in values:
            raise SettingsError(
                "DAGSTER_DEPLOYMENT=k8s needs NQ_HOME: the path of the volume every pod mounts"
            )
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            if not err["loc"]:  # a rule across fields: its message names the variables
                raise SettingsError(err["msg"].removeprefix("Value error, ")) from None
            field = str(err["loc"][0])
            var = FIELDS.get(field, field).split("|")[0]
            raise SettingsError(f"{var}={values.get(field)!r}: {err['msg']}") from None


# field -> environment variable(s), first set one wins ("A|B")
FIELDS: dict[str, str] = {
    "home": "NQ_HOME",
    "dagster_home": "DAGSTER_HOME",
    "deployment": "DAGSTER_DEPLOYMENT",
    "device": "NQ_DEVICE",
    "s3_bucket": "NQ_S3_BUCKET",
    "s3_prefix": "NQ_S3_PREFIX",
    "s3_endpoint": "NQ_S3_ENDPOINT",
    "aws_region": "AWS_REGION|AWS_DEFAULT_REGION",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "secrets_dir": "NQ_SECRETS_DIR",
    "compact_parts": "NQ_COMPACT_PARTS",
    "compact_big_rows": "NQ_COMPACT_BIG_ROWS",
    "compact_grace_s": "NQ_COMPACT_GRACE_S",
    "sensor_interval": "NQ_SENSOR_INTERVAL",
    "settle_seconds": "NQ_SETTLE_SECONDS",
    "max_attempts": "NQ_MAX_ATTEMPTS",
    "run_start_timeout_s": "NQ_RUN_START_TIMEOUT_S",
    "query_timeout_s": "NQ_QUERY_TIMEOUT_S",
    "query_memory": "NQ_QUERY_MEMORY",
    "query_max_rows": "NQ_QUERY_MAX_ROWS",
    "ingest_max_bytes": "NQ_INGEST_MAX_BYTES",
    "ingest_max_line_bytes": "NQ_INGEST_MAX_LINE_BYTES",
    "ingest_max_columns": "NQ_INGEST_MAX_COLUMNS",
    "ingest_max_rows": "NQ_INGEST_MAX_ROWS",
    "ingest_lock_timeout_s": "NQ_INGEST_LOCK_TIMEOUT_S",
    "min_rows_to_train": "NQ_MIN_ROWS_TO_TRAIN",
    "train_cron": "NQ_TRAIN_CRON",
    "freshness_seconds": "NQ_FRESHNESS_SECONDS",
    "training_fresh_hours": "NQ_TRAINING_FRESH_HOURS",
    "gpu_node_selector": "NQ_GPU_NODE_SELECTOR",
    "data_pvc": "NQ_DATA_PVC",
    "predict_threads": "NQ_PREDICT_THREADS",
    "serve_replicas": "NQ_SERVE_REPLICAS",
    "serve_replica": "NQ_SERVE_REPLICA",
    "serve_peers": "NQ_SERVE_PEERS",
    "serve_processes": "NQ_SERVE_PROCESSES",
    "serve_stream": "NQ_SERVE_STREAM",
    "serve_shared_store": "NQ_SERVE_SHARED_STORE",
    "serve_shared_lease_s": "NQ_SERVE_SHARED_LEASE_S",
    "serve_torch_threads": "NQ_SERVE_TORCH_THREADS",
    "hostname": "HOSTNAME",
    "serve_cors_origins": "NQ_SERVE_CORS_ORIGINS",
    "serve_metrics_open": "NQ_SERVE_METRICS_OPEN",
    "jwt_jwks": "NQ_JWT_JWKS",
    "jwt_issuer": "NQ_JWT_ISSUER",
    "jwt_audience": "NQ_JWT_AUDIENCE",
    "jwt_leeway_s": "NQ_JWT_LEEWAY_S",
    "jwt_roles_claim": "NQ_JWT_ROLES_CLAIM",
    "jwt_tenant_claim": "NQ_JWT_TENANT_CLAIM",
}


def settings_table() -> str:
    """The README's table of settings: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for field, var in FIELDS.items():
        info = Settings.model_fields[field]
        default = "" if info.default is None else str(info.default)
        rows.append(f"| `{var.replace('|', '` or `')}` | `{default}` | {info.description} |")
    return "\n".join(rows)


def child_env(settings: Settings, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child process (a Dagster run, `dg dev`) that must see these settings: the
    parent's environment with NQ_HOME and DAGSTER_HOME set, built as a new mapping (this process's stays
    untouched)."""
    env = dict(os.environ if base is None else base)
    env.update(NQ_HOME=str(settings.home), DAGSTER_HOME=str(settings.instance_dir), **extra)
    return env
