"""The lock files pin what pyproject.toml asks for, and every install path uses them.

These fail when a dependency is added to pyproject.toml without `make lock`, when the runtime
and dev locks drift apart, or when the Makefile or the Dockerfile stop installing from them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)")


def _pins(name: str) -> dict[str, str]:
    """{package: version} of a lock file; every pin must carry at least one hash."""
    text = (ROOT / name).read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        match = PIN.match(block)
        if match is None:
            continue
        assert "--hash=sha256:" in block, f"{name}: {match.group(1)} has no hash"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    assert pins, f"{name} pins nothing"
    return pins


def _check(requirements: list[str], pins: dict[str, str], lock: str) -> None:
    for line in requirements:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in {lock}: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, outside {req.specifier}: run make lock"
        )


def test_license_is_an_spdx_expression() -> None:
    assert PYPROJECT["project"]["license"] == "LicenseRef-Proprietary"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def test_runtime_lock_pins_every_dependency() -> None:
    _check(PYPROJECT["project"]["dependencies"], _pins("requirements.lock"), "requirements.lock")


def test_dev_lock_pins_runtime_and_dev_dependencies() -> None:
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    _check(requirements, _pins("requirements-dev.lock"), "requirements-dev.lock")


def test_build_lock_pins_the_build_backend() -> None:
    _check(PYPROJECT["dependency-groups"]["build"], _pins("requirements-build.lock"), "build")
    assert PYPROJECT["dependency-groups"]["build"] == PYPROJECT["build-system"]["requires"]


def test_runtime_and_dev_locks_agree() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("Makefile", "--require-hashes -r requirements-build.lock"),
        ("Makefile", "-r requirements-dev.lock"),
        ("Makefile", "pip install --quiet --no-deps --no-build-isolation -e ."),
        ("Dockerfile", "--require-hashes --prefix=/install -r requirements.lock"),
        ("Dockerfile", "--require-hashes -r requirements-build.lock"),
        ("Dockerfile", "--no-deps --no-build-isolation --prefix=/install ."),
        (".ci/run", "\nmake test\n"),
    ],
)
def test_installs_go_through_the_locks(path: str, needle: str) -> None:
    assert needle in (ROOT / path).read_text()
