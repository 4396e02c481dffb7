"""The `nq` commands that talk to a running server (`nq serve`) instead of the data directory, through the
package's client (`nq_dagster.client`: typed answers, retries on 429/503): `nq status --server URL`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from nq_dagster.client import Backoff, Client, NqApiError
from nq_dagster.settings import Settings


def read_key(path: str | None) -> str | None:
    """The API key in the file `path` (`-`: standard input); a key never goes on the command line, where every
    user of the machine could read it in the process list."""
    if not path:
        return None
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    key = text.strip()
    if not key:
        raise ValueError(f"--key-file {path}: the file is empty; write the key from `nq keys create` into it")
    return key


def cmd_status(args, settings: Settings) -> int:
    """The server's readiness and health; with a key, its components and each model it serves to that key
    (a tenant's key: its own sources). Exit 0 when ready and not down, else 1."""
    key = read_key(args.key_file)
    with Client(args.server, key=key, timeout=args.timeout, backoff=Backoff(retries=1)) as nq:
        try:
            ready = nq.ready()
            if key:
                status = nq.status().model_dump()
            else:
                status = nq.request("GET", "/api/v1/status")
        except NqApiError as exc:
            print(f"error: {args.server}: {exc.status} {exc}", file=sys.stderr)
            return 1
        except httpx.TransportError as exc:  # no server there: say where, not a traceback
            print(f"error: {args.server}: cannot connect: {exc}", file=sys.stderr)
            return 1
    ok = ready.ready and status["status"] != "down"
    if args.format == "json":
        print(json.dumps({"ready": ready.model_dump(), "status": status}, indent=1))
        return 0 if ok else 1
    print(f"{args.server}: {status['status']}, {'ready' if ready.ready else 'not ready'}")
    for missing in ready.missing:
        print(f"  missing: {missing}")
    if "components" not in status:
        print(f"  {status.get('detail', '')}")
        return 0 if ok else 1
    comp = status["components"]
    print(
        f"  engine {comp['engine']['status']} (queue {comp['engine']['queue_depth']}), storage "
        f"{comp['storage']['status']}, uptime {status['uptime_seconds']:.0f} s, "
        f"{status['predictions_per_second_1m']:g} predictions/s"
    )
    models = comp.get("models", {})
    if models:
        width = max(len(s) for s in models)
        print(f"  {'source':<{width}}  status    model_version                 rows_seen  last_timestamp")
        for s, m in sorted(models.items()):
            print(
                f"  {s:<{width}}  {m['status']:<8}  {m.get('model_version', '-'):<28}  "
                f"{m.get('rows_seen', '-')!s:>9}  {m.get('last_timestamp') or m.get('error', '')}"
            )
    return 0 if ok else 1
