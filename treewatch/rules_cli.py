"""``treewatch rules diff OLD NEW``: what a change does to the alerts, recording rules and Alertmanager
routing, for a pull request's reviewer (argument parsing, reading and output only; alerts/rules_diff.py
compares).

OLD and NEW are each a rule file, an Alertmanager configuration, a folder holding the generated files, or
a git ref, whose generated files are read with ``git show REF:alerts/generated/<file>``. Exit codes as
diff's: 0 no difference, 1 differences, 2 bad input (unreadable, not YAML, not a rule file, no such ref).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alerts.generate import ALERTMANAGER_FILE, RULES_FILE
from alerts.rules_diff import RulesInputError, diff, to_json, to_markdown

# The configuration file's bounded YAML loading, and its messages.
from pipeline.config import MAX_CONFIG_BYTES, ConfigError, parse_bounded_yaml, read_text_file
from treewatch.exit_codes import ExitCode
from treewatch.tools_cli import print_json

GENERATED_DIR = "alerts/generated"
RULES, ALERTMANAGER = "rules", "alertmanager"
GIT_TIMEOUT_SECONDS = 60


class UnreadableInput(Exception):
    """An argument that names nothing readable, or something that is not what it should be."""


@dataclass(frozen=True)
class Side:
    """One side of the comparison: the parsed documents it has, by kind (None: that file is absent there)."""

    label: str
    documents: dict[str, Any]


def add_rules_commands(sub: argparse._SubParsersAction) -> None:
    rules = sub.add_parser("rules", help="compare alert rules and Alertmanager routing")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    compare = rules_sub.add_parser(
        "diff", help="alerts, thresholds, `for`, severities and routes changed between two versions",
        description="Compares two versions of the generated rules (and, for folders and git refs, the "
                    "Alertmanager configuration): alerts and recording rules added, removed or changed "
                    "(expression, threshold, `for`, labels, annotations), rule groups, routes, receivers and "
                    "inhibitions. Markdown by default (for a pull request's job summary). Exit status as "
                    "diff's: 0 no difference, 1 differences, 2 trouble.")
    compare.add_argument("old", metavar="OLD", help="rule file, Alertmanager config, folder or git ref")
    compare.add_argument("new", metavar="NEW", help="rule file, Alertmanager config, folder or git ref")
    compare.add_argument("--json", action="store_true", help="print one JSON document")
    compare.add_argument("--repo", type=Path, default=Path("."), help="git repository of the refs (default: .)")
    compare.add_argument("--generated-dir", default=GENERATED_DIR,
                         help=f"where the generated files are in the repository (default: {GENERATED_DIR})")
    compare.set_defaults(run=_rules_diff)


def _rules_diff(args: argparse.Namespace) -> int:
    try:
        old = _side(args.old, args.repo, args.generated_dir)
        new = _side(args.new, args.repo, args.generated_dir)
        kinds = old.documents.keys() & new.documents.keys()
        if not kinds:
            raise UnreadableInput(f"{args.old} has {' and '.join(old.documents)} but {args.new} has "
                                  f"{' and '.join(new.documents)}: nothing to compare")
        if all(old.documents[kind] is None and new.documents[kind] is None for kind in kinds):
            raise UnreadableInput(f"neither {args.old} nor {args.new} has {args.generated_dir}/{RULES_FILE} "
                                  f"or {args.generated_dir}/{ALERTMANAGER_FILE}")
        # Only what both sides have is compared: a rule file against a ref compares the rules.
        compared = {kind: (old.documents[kind], new.documents[kind]) for kind in kinds}
        result = diff(*compared.get(RULES, (None, None)), *compared.get(ALERTMANAGER, (None, None)),
                      old_source=old.label, new_source=new.label)
    except (UnreadableInput, RulesInputError) as error:
        print(f"treewatch rules diff: {error}", file=sys.stderr)
        return ExitCode.USAGE
    if args.json:
        print_json(to_json(result))
    else:
        sys.stdout.write(to_markdown(result, args.old, args.new))
    return ExitCode.of(result.empty)


def _side(spec: str, repo: Path, generated_dir: str) -> Side:
    path = Path(spec)
    if path.is_dir():
        documents = {kind: _parse(_read(path / name), str(path / name)) for kind, name in _FILES.items()
                     if (path / name).exists()}
        if not documents:
            raise UnreadableInput(f"{path}: holds neither {RULES_FILE} nor {ALERTMANAGER_FILE}")
        return Side(spec, documents)
    if path.exists():
        document = _parse(_read(path), spec)
        return Side(spec, {_kind(document, spec): document})
    commit = _commit(spec, repo)
    documents = {}
    for kind, name in _FILES.items():
        text = _git_file(repo, commit, f"{generated_dir.strip('/')}/{name}", spec)
        documents[kind] = None if text is None else _parse(text, f"{spec}:{generated_dir.strip('/')}/{name}")
    # A commit without the files (a base before they were added) compares as empty: everything is added.
    return Side(spec, documents)


_FILES = {RULES: RULES_FILE, ALERTMANAGER: ALERTMANAGER_FILE}


def _read(path: Path) -> str:
    try:
        return read_text_file(path, MAX_CONFIG_BYTES)
    except ConfigError as error:
        raise UnreadableInput(f"{path}: cannot read: {error}") from None


def _parse(text: str, source: str) -> Any:
    # The configuration's loader: bounded in values, aliases and depth, so no input costs more than its size.
    try:
        return parse_bounded_yaml(text, source)
    except ConfigError as error:
        raise UnreadableInput(str(error)) from None


def _kind(document: Any, source: str) -> str:
    if isinstance(document, dict) and "groups" in document:
        return RULES
    if isinstance(document, dict) and ("route" in document or "receivers" in document):
        return ALERTMANAGER
    raise UnreadableInput(f"{source}: neither a Prometheus rule file (no `groups`) nor an Alertmanager "
                          "configuration (no `route`)")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=GIT_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UnreadableInput(f"git {' '.join(args)}: {error}") from None


def _commit(spec: str, repo: Path) -> str:
    found = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{spec}^{{commit}}")
    if found.returncode != 0:
        raise UnreadableInput(f"{spec}: no such file or folder, and not a git ref in {repo.resolve()}")
    return found.stdout.decode().strip()


def _git_file(repo: Path, commit: str, path: str, spec: str) -> str | None:
    """The file at ``path`` in ``commit``, None when the commit has none; its size is asked first, so a
    huge blob is refused before it is read."""
    size = _git(repo, "cat-file", "-s", f"{commit}:{path}")
    if size.returncode != 0:
        return None
    if int(size.stdout) > MAX_CONFIG_BYTES:
        raise UnreadableInput(f"{spec}:{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; refused")
    blob = _git(repo, "cat-file", "blob", f"{commit}:{path}")
    if blob.returncode != 0:
        raise UnreadableInput(f"{spec}:{path}: {blob.stderr.decode(errors='replace').strip()}")
    try:
        return blob.stdout.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableInput(f"{spec}:{path}: not UTF-8 text (offset {error.start})") from None
