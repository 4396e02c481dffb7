"""What `nq --help` and `nq <command> --help` show beyond the parser's own text: an example per command, the
default of every option that has one, and a description for the options the parser leaves bare.
`tests/test_cli_help.py` fails on a command without an example or an option without a description, so a new
option cannot land undocumented."""

from __future__ import annotations

import argparse
from importlib import metadata

import nq_dagster

EXAMPLES: dict[str, list[str]] = {
    "demo": [
        "nq demo                      # 5 sources of 3000 points, trained and validated",
        "nq demo --sources 3 --points 1500 --seed 7",
    ],
    "run": ["nq run                       # every landed / stored source", "nq run --source market_A --wide"],
    "ingest": [
        "nq ingest ticks.csv --source market_A",
        "nq ingest sensors.jsonl --rename reading=value --skip-bad-rows",
    ],
    "compact": ["nq compact --source market_A"],
    "query": [
        'nq query "SELECT source, count(*) FROM predictions GROUP BY source"',
        'nq query "SELECT * FROM validation_metrics" --format csv',
    ],
    "predict": [
        "nq predict --source market_A",
        "nq predict --source market_A --values 101.2,101.4 --all --compact",
    ],
    "serve": [
        "nq serve                     # http://127.0.0.1:8080, docs at /docs",
        "nq serve --host 0.0.0.0 --port 9000 --processes 2",
        "nq serve --stream nats://nats:4222 --replica 1 --partitions 16 --lease-ttl 5",
    ],
    "keys": [
        "nq keys create --role developer --rate 600/min --name ingest-bot",
        "nq keys create --role developer --tenant acme",
        "nq keys list",
        "nq keys revoke 3f2a9c1d",
    ],
    "create": [
        "nq keys create --role viewer --name dashboard",
        "nq keys create --role admin --tenant acme --name acme-admin   # administers tenant acme only",
    ],
    "list": ["nq keys list"],
    "revoke": ["nq keys revoke 3f2a9c1d"],
    "models": [
        "nq models                    # every source's versions: current, promoted, rejected",
        "nq models --source market_A --format json",
    ],
    "status": [
        "nq status --server http://127.0.0.1:8080                       # health and readiness",
        "nq status --server http://127.0.0.1:8080 --key-file ~/.nq-key --format json",
    ],
    "dev": ["nq dev                       # the Dagster UI on http://127.0.0.1:3000", "nq dev --port 3001"],
}

# options the parser declares without a description: (command, dest) -> what it is
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("demo", "sources"): "how many demo sources to generate",
    ("demo", "points"): "points per demo source",
    ("demo", "seed"): "random seed of the demo data (the same seed, the same data)",
    ("ingest", "files"): "CSV, Parquet or JSON-lines files (a glob your shell expands)",
    ("query", "sql"): "one DuckDB SQL statement over the warehouse's tables (read-only)",
    ("query", "format"): "output as a table, CSV or JSON",
    ("predict", "source"): "the source to predict (as trained)",
    ("serve", "port"): "port to listen on",
    ("serve", "log_level"): "log level of the server's JSON logs",
    (
        "create",
        "role",
    ): "what the key may do: viewer reads, developer also posts ticks, admin also manages keys and config",
    ("revoke", "id"): "the key's id (from `nq keys list`)",
    ("dev", "port"): "port of the Dagster UI",
}


def version() -> str:
    try:
        return metadata.version("nq-dagster")
    except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH without an install
        return nq_dagster.__version__


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written and appends `(default: X)` to an option whose help does
    not state its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and not any(default is v for v in (None, False, argparse.SUPPRESS))  # 0 is a default to show
            and default != []
            and action.option_strings
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def polish(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--version`, the formatter, the examples and the bare options' descriptions, on every (sub)command."""
    p.add_argument("--version", action="version", version=f"nq {version()}")
    p.formatter_class = Formatter
    first = [EXAMPLES[n][0] for n in _subparsers(p) if n in EXAMPLES]
    p.epilog = (
        "examples:\n"
        + "\n".join(f"  {e}" for e in first)
        + "\n\n`nq <command> --help`: its options and examples"
    )

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        parser.formatter_class = Formatter
        if name in EXAMPLES:
            parser.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])
        for action in parser._actions:
            if not action.help and (name, action.dest) in DESCRIPTIONS:
                action.help = DESCRIPTIONS[(name, action.dest)]
        for sub_name, sub in _subparsers(parser).items():
            walk(sub, sub_name)

    for name, sub in _subparsers(p).items():
        walk(sub, name)
    return p
