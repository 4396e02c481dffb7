"""The `nq` command: demo, run, ingest, query, predict, serve, keys, models, status, dev.

Every command works on the data directory `$NQ_HOME` (default `.nq/` under the
working directory, or `--home`). Pipeline runs execute in-process against the
persistent Dagster instance in `$NQ_HOME/dagster`, so they show up in `nq dev`.
"""

from __future__ import annotations

import argparse
import sys

from nq_dagster.cli import commands
from nq_dagster.cli.help import polish
from nq_dagster.settings import Settings


def _processes(name: str):
    """A command of `cli.processes`, imported when it runs (it imports Dagster, which `nq query` must not)."""

    def run(args, settings: Settings) -> int:
        from nq_dagster.cli import processes

        return getattr(processes, name)(args, settings)

    return run


def _remote(name: str):
    """A command of `cli.remote` (it talks to a server through the client), imported when it runs."""

    def run(args, settings: Settings) -> int:
        from nq_dagster.cli import remote

        return getattr(remote, name)(args, settings)

    return run


def _summary_options(p: argparse.ArgumentParser) -> None:
    """`--wide` and `--format` of the per-source summary that `nq run` and `nq demo` print."""
    p.add_argument(
        "--wide", action="store_true", help="every column of the summary (default: fits 100 columns)"
    )
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="the summary as a table, CSV or JSON",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nq", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="data directory (default: $NQ_HOME or ./.nq)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="generate the demo sources and run the whole graph")
    d.add_argument("--sources", type=int, default=5)
    d.add_argument("--points", type=int, default=3000)
    d.add_argument("--seed", type=int, default=0)
    _summary_options(d)
    d.set_defaults(fn=commands.cmd_demo)
    r = sub.add_parser("run", help="run the graph for landed / stored sources")
    r.add_argument("--source", action="append", help="only this source (repeatable)")
    _summary_options(r)
    r.set_defaults(fn=commands.cmd_run)
    i = sub.add_parser("ingest", help="ingest CSV / Parquet / JSON-lines files")
    i.add_argument("files", nargs="+")
    i.add_argument(
        "--source", help="source name for every row (default: the `source` column, else the file name)"
    )
    i.add_argument("--skip-bad-rows", action="store_true", help="store the good rows, record the bad ones")
    i.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="map a column of the file to the source's name for it (repeatable), e.g. reading=value",
    )
    i.add_argument(
        "--delimiter",
        default=",",
        help="CSV field delimiter (default ','; e.g. ';', or '\\t' for tabs)",
    )
    i.add_argument(
        "--timestamp-format",
        metavar="STRFTIME",
        help="read the timestamps by this strftime format only, e.g. '%%b %%d %%Y' for 'Jan 1 2000' "
        "(default: ISO 8601 or epoch seconds/milliseconds)",
    )
    i.add_argument(
        "--timezone",
        metavar="ZONE",
        help="IANA zone of timestamps written without an offset, e.g. Europe/Paris (default: UTC)",
    )
    i.add_argument(
        "--value-column",
        metavar="NAME",
        help="the column to predict, stored as `value` (needed when a file has several value columns and "
        "none named value or price)",
    )
    i.set_defaults(fn=commands.cmd_ingest)
    cp = sub.add_parser("compact", help="merge each source's raw_ticks parts into one (atomic)")
    cp.add_argument("--source", help="one source (default: every source)")
    cp.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds the replaced files stay for queries that listed them (default 60)",
    )
    cp.set_defaults(fn=commands.cmd_compact)
    q = sub.add_parser("query", help="run DuckDB SQL over the warehouse")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(fn=commands.cmd_query)
    pr = sub.add_parser(
        "predict", help="one prediction as JSON from the latest model and saved reservoir state"
    )
    pr.add_argument("--source", required=True)
    pr.add_argument(
        "--values",
        help="new values after the last one seen, comma-separated; the prediction is "
        "for the last of them (default: the prediction for the last row already seen)",
    )
    pr.add_argument("--all", action="store_true", help="print a list: one prediction per new value")
    pr.add_argument("--compact", action="store_true", help="one line of JSON")
    pr.set_defaults(fn=commands.cmd_predict)
    sv = sub.add_parser(
        "serve", help="the prediction server (REST, WebSocket, metrics) on the trained models"
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument(
        "--replica",
        type=int,
        help="this replica's index (default: NQ_SERVE_REPLICA, else the "
        "host name's ordinal, nq-serve-2 -> 2)",
    )
    sv.add_argument("--replicas", type=int, help="replica count (default NQ_SERVE_REPLICAS or 1)")
    sv.add_argument(
        "--peers", help="replica base URLs, comma-separated, or a template with {i} (default NQ_SERVE_PEERS)"
    )
    sv.add_argument(
        "--fsync",
        choices=["interval", "always"],
        default="interval",
        help="fsync the tick log every 100 ms (default) or before every reply",
    )
    sv.add_argument(
        "--flush-interval",
        type=float,
        default=10.0,
        help="seconds between writes of the tick log "
        "into the raw_ticks / predictions tables (the log itself is written before every reply)",
    )
    sv.add_argument(
        "--processes",
        type=int,
        help="prediction processes (default NQ_SERVE_PROCESSES or 1): the "
        "sources are shared out between this process and processes - 1 workers, one core each",
    )
    sv.add_argument(
        "--stream",
        help="also take ticks from NATS JetStream at this URL (nats://host:4222; default NQ_SERVE_STREAM): "
        "subjects nq.ticks.<source> in, nq.predictions.<source> and nq.dead.<source> out; replicas "
        "started with it share the stream's partitions and take over a dead one's",
    )
    sv.add_argument(
        "--partitions",
        type=int,
        default=16,
        help="with --stream: partitions of the tick stream (default 16; fixed for the stream's life, more "
        "than the replicas), shared among the live replicas by leases",
    )
    sv.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="with --stream: seconds a partition lease lives unrenewed (default 5): a dead replica's "
        "partitions are taken over after at most this",
    )
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sv.set_defaults(fn=_processes("cmd_serve"))
    k = sub.add_parser("keys", help="API keys of the prediction server")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    kc.add_argument("--role", required=True, choices=["viewer", "developer", "admin"])
    kc.add_argument("--rate", default="600/min", help="sustained request rate (N/s, N/min, N/h)")
    kc.add_argument("--burst", type=int, default=50, help="requests allowed at once above the rate")
    kc.add_argument("--max-concurrent", type=int, default=32, help="requests of this key in flight at once")
    kc.add_argument("--name", help="a label")
    kc.add_argument(
        "--tenant",
        help="the tenant the key belongs to: it reaches that tenant's sources only, and as admin administers "
        "that tenant only (default: none, the default namespace; an admin key without one is the platform's)",
    )
    ksub.add_parser("list", help="list keys (never the keys themselves)")
    kr = ksub.add_parser("revoke", help="revoke a key")
    kr.add_argument("id")
    k.set_defaults(fn=commands.cmd_keys)
    mv = sub.add_parser("models", help="model versions and the promotion gate's decisions")
    mv.add_argument("--source", help="one source (default: every source)")
    mv.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    mv.set_defaults(fn=commands.cmd_models)
    st = sub.add_parser("status", help="a running server's health and models (through nq_dagster.client)")
    st.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8080")
    st.add_argument(
        "--key-file",
        help="a file holding a viewer key (`-`: standard input) for the components and models; without "
        "one, the overall health only",
    )
    st.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    st.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    st.set_defaults(fn=_remote("cmd_status"))
    dv = sub.add_parser("dev", help="open the Dagster UI")
    dv.add_argument("--port", type=int, default=3000)
    dv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    dv.set_defaults(fn=_processes("cmd_dev"))
    return polish(p)  # --version, an example per command, every option's description and default


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # the one place the command line reads the environment: every command gets these settings
        settings = Settings.from_env().with_home(args.home)
        return args.fn(args, settings)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
