"""`nq --version`, and `--help` that documents every option (a description, its default) and shows an example
per command (issue 27)."""

from __future__ import annotations

import argparse

import pytest

from nq_dagster.cli import build_parser, main
from nq_dagster.cli.help import EXAMPLES, version


def commands(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from commands(sub, (*prefix, name))


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"nq {version()}"


def test_every_command_has_an_example_and_every_option_a_description_and_its_default():
    parser = build_parser()
    found = list(commands(parser))
    assert {path[-1] for path, _ in found} <= set(EXAMPLES)
    for path, sub in found:
        text = sub.format_help()
        assert "examples:\n  nq " in text, path
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"nq {' '.join(path)}: {action.dest} has no description"
            shown = action.default is not None and action.default is not False and action.default != []
            if action.option_strings and shown and action.nargs != 0:
                line = sub._get_formatter()._get_help_string(action) % {"default": action.default}
                assert "default" in line, f"nq {' '.join(path)} {action.option_strings[0]}: default not shown"
    serve = dict(found)[("serve",)].format_help()
    assert "(default: 8080)" in serve and "nq serve --host 0.0.0.0" in serve
    assert "(default: 0)" in dict(found)[("demo",)].format_help()  # a zero default is a default
    assert "nq demo" in parser.format_help() and "--version" in parser.format_help()
