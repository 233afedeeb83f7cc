"""Every `treewatch ...` command the README and the runbooks tell people to type parses with the
real command line, so the docs on-call reads at 3 a.m. cannot drift from the tool."""

from __future__ import annotations

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
    with contextlib.redirect_stderr(stderr):
        try:
            build_parser().parse_args(words)
        except SystemExit:
            return stderr.getvalue()
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
        assert error is None or (bare and "the following arguments are required" in error), \
            (where, command, error)


def test_a_mistyped_command_is_caught():
    assert "invalid choice" in parse_error(variants("treewatch dlq replai --stage 1")[0])
    assert "unrecognized arguments" in parse_error(variants("treewatch trace --correlation-id <id> --jsn")[0])
