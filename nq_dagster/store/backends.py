"""Where tables and artifacts live: one storage layer over pyarrow's file systems, `LocalStore` (the data
directory, pyarrow's LocalFileSystem) or `ObjectStore` (an S3-compatible bucket,
`s3://<bucket>/<prefix>/warehouse/...`, `.../artifacts/...`). Every read, listing and delete is the same call
on the store's `fs`; a store says only how a write is made atomic (local: a temporary file renamed over the
target; the bucket: a single PUT), whether lock files work (local only), and whether DuckDB reads its files
itself (local) or through pyarrow datasets (the bucket). The backend is chosen from explicit parameters or a
`Settings` object only (`ObjectStore.from_settings`, `Warehouse.from_settings`), never from the environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nq_dagster.settings import Settings
from nq_dagster.store.atomic import atomic_write_bytes, atomic_write_parquet, parquet_options
from nq_dagster.store.locks import file_locks


@dataclass(frozen=True)
class ObjectStore:
    """Where tables and artifacts go in the k8s deployment: an S3-compatible bucket (pyarrow's S3 client)."""

    bucket: str
    prefix: str
    endpoint: str | None
    fs: pafs.FileSystem

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore | None:
        """The bucket `settings.s3_bucket` names (with its prefix, endpoint, credentials); None when empty."""
        bucket = settings.s3_bucket.strip()
        if not bucket:
            return None
        return cls.connect(
            bucket,
            settings.s3_prefix,
            settings.s3_endpoint,
            region=settings.aws_region,
            access_key=settings.aws_access_key_id,
            secret_key=settings.aws_secret_access_key,
        )

    @classmethod
    def connect(
        cls,
        bucket: str,
        prefix: str = "nq",
        endpoint: str = "",
        *,
        region: str = "us-east-1",
        access_key: str = "",
        secret_key: str = "",
    ) -> ObjectStore:
        """The bucket through pyarrow's S3 client. `endpoint`: `http(s)://host[:port]` of an S3-compatible
        server (empty: AWS). Without `access_key` the client finds credentials on its own (its default
        chain)."""
        endpoint = endpoint.strip() or None
        kw: dict[str, Any] = {"region": region}
        if access_key:
            kw.update(access_key=access_key, secret_key=secret_key)
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            if not host:
                raise ValueError(f"NQ_S3_ENDPOINT={endpoint!r}: expected http(s)://host[:port]")
            kw.update(endpoint_override=host, scheme=scheme)
        return cls(bucket.strip(), prefix.strip("/"), endpoint, pafs.S3FileSystem(**kw))

    local: ClassVar[bool] = False  # DuckDB reads these parts through pyarrow datasets (the bucket's client)

    def path(self, *parts: str) -> str:
        return "/".join(p for p in (self.bucket, self.prefix, *parts) if p)

    def url(self) -> str:
        return f"s3://{self.path()}" + (f" at {self.endpoint}" if self.endpoint else "")

    def describe(self, key: str) -> str:
        return f"s3://{key}"

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.fs.open_output_stream(key) as fh:  # one PUT: the object appears whole or not at all
            fh.write(data)

    def put_parquet(self, key: str, table: pa.Table, store_schema: bool = True) -> None:
        pq.write_table(
            table, key, filesystem=self.fs, store_schema=store_schema, **parquet_options(table.schema)
        )

    @contextlib.contextmanager
    def lock(self, names: list[str], timeout_s: float) -> Iterator[None]:
        """A bucket has no lock: one writer per source is the deployment's job (the run queue's one run per
        source, the server's one owner per source)."""
        yield


@dataclass(frozen=True)
class LocalStore:
    """Tables and artifacts in the data directory on a local (or mounted) file system, through pyarrow's
    LocalFileSystem: every read, listing and delete is the same call as on the bucket (`ObjectStore`). What
    differs is how a write is made atomic (a temporary file in the same directory, fsynced and renamed over
    the target; a bucket's PUT is atomic by itself) and that lock files work here."""

    home: Path
    fs: pafs.FileSystem = field(default_factory=pafs.LocalFileSystem)
    local: ClassVar[bool] = True  # DuckDB reads these parts with its own Parquet reader

    def path(self, *parts: str) -> str:
        return "/".join(p for p in (str(self.home), *parts) if p)

    def url(self) -> str:
        return str(self.home)

    def describe(self, key: str) -> str:
        return key

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(Path(key), data)

    def put_parquet(self, key: str, table: pa.Table, store_schema: bool = True) -> None:
        atomic_write_parquet(Path(key), table, store_schema)

    @contextlib.contextmanager
    def lock(self, names: list[str], timeout_s: float) -> Iterator[None]:
        """Exclusive inter-process locks (lock files under the data directory, `locks.file_locks`)."""
        with file_locks(self.home / ".locks", names, timeout_s):
            yield


Backend = ObjectStore | LocalStore
