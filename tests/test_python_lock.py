"""requirements.lock pins every Python package, and `make setup` installs exactly those versions.

A dependency range in pyproject.toml alone lets a fresh machine next month install newer releases
than the ones this commit was tested with; the lock (written by scripts/lock.sh) closes that.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"


def pinned() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalise(name)] = version
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)) for requirement in requirements]


def test_every_dependency_of_pyproject_is_pinned_to_one_version() -> None:
    pins = pinned()
    assert [name for name in declared() if name not in pins] == []
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version) for version in pins.values()), pins
    assert pins["grafanalib"] == "0.7.1"


def test_the_running_interpreter_has_exactly_the_locked_versions() -> None:
    # `make test` runs in the virtualenv `make setup` built with the lock as constraints; a package
    # at another version means setup ignored the lock (or the lock was not regenerated).
    if sys.prefix == sys.base_prefix:
        pytest.skip("not in the project's virtualenv (make setup creates .venv)")
    installed = {normalise(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pinned().items()
             if installed.get(name) != version}
    assert wrong == {}
