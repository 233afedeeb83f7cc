"""CI's rules job (.github/workflows/rules.yml) and the pre-commit hook run what the Makefile runs, on
paths that cover every file that check reads, so neither can drift from `make check-rules`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "rules.yml"
PRE_COMMIT = ROOT / ".pre-commit-config.yaml"
MAKEFILE = ROOT / "Makefile"
CHECK_TARGET = "check-rules"
# A run line is a make target, its output perhaps appended to the job summary; no variable is overridden
# (PYTHON=..., RULES_TESTS=... would run something else than a developer's `make check-rules`).
MAKE_LINE = re.compile(r'make(?: -s)? (?P<target>[\w-]+)(?: >> "\$GITHUB_STEP_SUMMARY")?')
# What a step may set in make's environment: the pull request's base commit, for the rules diff.
STEP_ENVIRONMENT = {"BASE"}


def _workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps() -> list[dict[str, Any]]:
    (job,) = _workflow()["jobs"].values()
    return job["steps"]


def _run_lines() -> list[str]:
    return [line.strip() for step in _steps() if "run" in step for line in step["run"].splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):(?!=)", MAKEFILE.read_text(), flags=re.MULTILINE))


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    # The Makefile's PYTHON is the project's virtualenv; the tests run with this interpreter instead.
    return subprocess.run(["make", "--no-print-directory", f"PYTHON={sys.executable}", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A GitHub Actions `paths` glob: `**` crosses folders, `*` and `?` do not."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def _workflow_paths() -> list[str]:
    workflow = _workflow()
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    return on["pull_request"]["paths"]


def _watched_by_workflow(path: str) -> bool:
    return any(_glob_regex(pattern).fullmatch(path) for pattern in _workflow_paths())


def _hook() -> dict[str, Any]:
    (repo,) = yaml.safe_load(PRE_COMMIT.read_text())["repos"]
    (hook,) = repo["hooks"]
    return hook


def _watched_by_hook(path: str) -> bool:
    return re.search(_hook()["files"], path) is not None  # pre-commit's `files` is re.search'ed


def _repository_files() -> set[str]:
    """Tracked files and new ones not ignored: what a pull request can change."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, check=True)
    return {line for line in listed.stdout.splitlines() if (ROOT / line).is_file()}


# What `make check-rules` runs in Python, with an audit hook noting every file opened below the repository.
_READS = """
import json, os, sys
root = os.getcwd() + os.sep
opened = set()
def note(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(root):
            opened.add(path[len(root):])
sys.addaudithook(note)
import runpy, pytest
for module, arguments in [("alerts.generate", ["--out", sys.argv[1] + "/alerts"]),
                          ("dashboards.generate", ["--output-dir", sys.argv[1] + "/dashboards"])]:
    sys.argv[1:] = arguments
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit:
        pass
pytest.main(["-q", "-p", "no:cacheprovider", "-p", "tests.without_servers", *json.loads(os.environ["RULES_TESTS"])])
print("READS " + json.dumps(sorted(opened)))
"""


def _files_check_rules_reads(scratch: str) -> set[str]:
    tests = re.search(r"^RULES_TESTS = (.+)$", MAKEFILE.read_text(), flags=re.MULTILINE)[1].split()
    result = subprocess.run([sys.executable, "-c", _READS, scratch], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env={**os.environ, "RULES_TESTS": json.dumps(tests)})
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("READS ")]
    # Files only: pytest's temporary folders and compiled caches are no input.
    return set(json.loads(line.removeprefix("READS "))) & _repository_files()


# -- the workflow runs the Makefile's commands ----------------------------------------------------------------


def test_every_run_step_is_a_make_target_and_check_rules_is_one() -> None:
    lines = _run_lines()
    targets = [MAKE_LINE.fullmatch(line) for line in lines]
    strays = [line for line, target in zip(lines, targets, strict=True) if not target]
    assert not strays, f"run steps that are not `make <target>`: {strays}"
    called = [match["target"] for match in targets if match]
    assert CHECK_TARGET in called
    assert set(called) <= _make_targets(), f"targets the Makefile has not: {set(called) - _make_targets()}"
    for step in _steps():
        assert set(step.get("env", {})) <= STEP_ENVIRONMENT, f"{step.get('name')} sets {step['env']}"
    (job,) = _workflow()["jobs"].values()
    assert not _workflow().get("env") and not job.get("env")


def test_check_rules_runs_the_generators_promtool_amtool_and_the_static_tests() -> None:
    dry = _make("-n", "-o", "setup-python", CHECK_TARGET)
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout
    for expected in ("-m alerts.generate --out", "-m dashboards.generate --output-dir",
                     "promtool check rules alerts/generated/treewatch-rules.yml", "promtool test rules alerts/tests/",
                     "amtool check-config alerts/generated/alertmanager.yml", "-m pytest -q -p tests.without_servers"):
        assert expected in commands, f"`make {CHECK_TARGET}` no longer runs {expected!r}:\n{commands}"


def test_check_rules_selects_the_tests_that_start_no_server() -> None:
    tests = re.search(r"^RULES_TESTS = (.+)$", MAKEFILE.read_text(), flags=re.MULTILINE)[1].split()
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "-p", "tests.without_servers", *tests], capture_output=True, text=True, timeout=300,
                               cwd=ROOT)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    selected = collected.stdout
    assert "test_promtool_unit_tests" in selected and "test_amtool_routes[critical]" in selected
    assert "test_amtool_renders_a_firing_message" in selected and "test_panel_ids_are_unique" in selected
    # Those of a real Prometheus or Alertmanager are left to `make test`.
    for server_test in ("test_query_returns_series", "test_every_variable_has_values",
                        "test_critical_pages_oncall_and_resolves"):
        assert server_test not in selected
    assert re.search(r"\d+ deselected", selected)


def test_the_job_summary_is_the_rules_diff_from_the_pull_requests_base() -> None:
    (checkout,) = [step for step in _steps() if step.get("uses", "").startswith("actions/checkout@")]
    assert checkout["with"]["fetch-depth"] == 0, "the base commit must be fetched for the diff"
    (summary,) = [step for step in _steps() if "GITHUB_STEP_SUMMARY" in step.get("run", "")]
    assert summary["run"].startswith("make -s rules-diff")
    assert summary["env"]["BASE"] == "${{ github.event.pull_request.base.sha }}"
    dry = _make("-n", "rules-diff", "BASE=base-sha")
    assert dry.returncode == 0 and "-m treewatch rules diff base-sha HEAD" in dry.stdout, dry.stdout + dry.stderr


def test_rules_diff_target_reports_differences_and_fails_only_on_bad_input(tmp_path: Path) -> None:
    rules = ROOT / "alerts" / "generated" / "treewatch-rules.yml"
    changed = tmp_path / "changed.yml"
    changed.write_text(rules.read_text().replace("for: 5m", "for: 7m", 1))
    differs = _make("-s", "rules-diff", f"BASE={rules}", f"HEAD={changed}")
    assert differs.returncode == 0, differs.stdout + differs.stderr
    assert "| `for` | `5m` | `7m` |" in differs.stdout
    broken = _make("-s", "rules-diff", f"BASE={tmp_path / 'missing.yml'}", f"HEAD={changed}")
    assert broken.returncode != 0
    assert "missing.yml: no such file or folder" in broken.stderr


# -- the paths ------------------------------------------------------------------------------------------------


def test_workflow_paths_cover_every_file_check_rules_reads(tmp_path: Path) -> None:
    reads = _files_check_rules_reads(str(tmp_path))
    # The generators' own inputs at least; a broken import would make the list short, not wrong.
    assert {"alerts/config.py", "dashboards/common.py", "exporter/metrics.py", "alerts/tests/guide.yml",
            "docs/runbooks.md"} <= reads
    missed = sorted(path for path in reads if not _watched_by_workflow(path))
    assert not missed, f"{WORKFLOW.name} does not run when these change, yet check-rules reads them: {missed}"
    for own in (".github/workflows/rules.yml", ".pre-commit-config.yaml", "Makefile", "scripts/setup.sh",
                "requirements.lock", "treewatch/rules_cli.py"):
        assert _watched_by_workflow(own), own


def test_glob_semantics_of_the_paths_matcher() -> None:
    assert _glob_regex("alerts/**").fullmatch("alerts/tests/guide.yml")
    assert not _glob_regex("exporter/*.py").fullmatch("exporter/sub/metrics.py")
    assert not _glob_regex("Makefile").fullmatch("Makefile.bak")


def test_pre_commit_hook_runs_the_same_target_on_the_same_paths() -> None:
    hook = _hook()
    assert hook["entry"] == f"make {CHECK_TARGET}"
    assert hook["language"] == "system" and hook["pass_filenames"] is False
    files = _repository_files() | {".github/workflows/rules.yml", ".pre-commit-config.yaml"}
    differ = sorted(path for path in files if _watched_by_workflow(path) != _watched_by_hook(path))
    assert not differ, f"the workflow's paths and the hook's files disagree on {differ}"
    assert _watched_by_hook("alerts/config.py") and not _watched_by_hook("simulator/core.py")
