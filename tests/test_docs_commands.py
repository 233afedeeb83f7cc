"""Every `treewatch ...` command the README and the runbooks tell people to type parses with the
real command line, so the docs on-call reads at 3 a.m. cannot drift from the tool."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

from treewatch.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "runbooks.md", ROOT / "docs" / "incidents.md"]
# The README's table of every treewatch command, one row each.
README_COMMANDS = re.compile(r"^## The `treewatch` command\n(.*?)^## ", re.M | re.S)


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every inline `treewatch ...` and every code line starting with it."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for command in re.findall(r"`(treewatch [^`]+)`", text):
            found.append((doc.name, command))
        for line in re.findall(r"^\s*(treewatch [^\n#]+)", text, re.M):
            found.append((doc.name, line.strip()))
    return found


def variants(command: str) -> list[list[str]]:
    """The words to parse: placeholders (<x>, F, N, ...) become a value, `a|b` each alternative."""
    words = shlex.split(re.sub(r"<[^>]+>|\.\.\.", "1", command))[1:]
    words = ["1" if re.fullmatch(r"[A-Z]", w) else w for w in words]
    return [list(choice) for choice in itertools.product(*(w.split("|") for w in words))]


def parse_error(words: list[str]) -> str | None:
    stderr = io.StringIO()
    # --help and --version print to stdout and exit 0: they parse.
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(words)
        except SystemExit as exited:
            return stderr.getvalue() if exited.code else None
    return None


def test_the_docs_name_commands_at_all():
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize("where, command", documented_commands())
def test_a_documented_command_parses(where, command):
    for words in variants(command):
        error = parse_error(words)
        # A bare mention of a subcommand ("run `treewatch trace`") may leave out its required
        # options; a command shown with options must be complete (argparse reports a missing
        # option before a misspelt one, so an incomplete command could hide a typo).
        bare = not any(word.startswith("-") for word in words)
        assert error is None or (bare and ("the following arguments are required" in error
                                           or re.search(r"one of the arguments .* is required", error))), \
            (where, command, error)


def test_a_mistyped_command_is_caught():
    assert "invalid choice" in parse_error(variants("treewatch dlq replai --stage 1")[0])
    assert "unrecognized arguments" in parse_error(variants("treewatch trace --correlation-id <id> --jsn")[0])


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of the command and its subcommands, at any depth."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= option_strings(child)
    return found


def test_every_option_the_docs_show_exists() -> None:
    known = option_strings(build_parser())
    shown = {(doc.name, option) for doc in [*DOCS, *sorted((ROOT / "docs").glob("*.md"))]
             for option in re.findall(r"`(--[a-z][-a-z.]*)", doc.read_text())}
    assert len(shown) >= 10
    assert not {(where, option) for where, option in shown if option not in known}


def test_the_readmes_command_table_lists_the_commands_of_help() -> None:
    section = README_COMMANDS.search((ROOT / "README.md").read_text())
    assert section, "README.md has no section '## The `treewatch` command'"
    in_readme = re.findall(r"^\| `treewatch ([a-z][-a-z]*)", section.group(1), re.M)
    assert len(in_readme) == len(set(in_readme)), in_readme
    in_help = re.findall(r"^  ([a-z][-a-z]*)  ", build_parser().format_help(), re.M)
    assert sorted(in_readme) == sorted(in_help)

