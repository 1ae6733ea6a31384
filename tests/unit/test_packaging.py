"""Packaging settings that must agree: the Python the package claims, the one mypy and ruff
check against, and the typing marker shipped with the package data."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_checkers_target_the_oldest_python_the_package_claims() -> None:
    claimed = re.fullmatch(r">=(\d+)\.(\d+)", CONFIG["project"]["requires-python"])
    assert claimed, CONFIG["project"]["requires-python"]
    major, minor = claimed.groups()
    assert CONFIG["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
    assert CONFIG["tool"]["ruff"]["target-version"] == f"py{major}{minor}"


def test_the_typing_marker_ships() -> None:
    assert (REPO / "balsam_mpi" / "py.typed").is_file()
    assert "py.typed" in CONFIG["tool"]["setuptools"]["package-data"]["balsam_mpi"]


def test_pytest_markers_are_strict() -> None:
    assert "--strict-markers" in CONFIG["tool"]["pytest"]["ini_options"]["addopts"]


def test_the_trampolines_c_source_ships() -> None:
    """node/trampoline.py reads its C source beside it at import: without it in the
    package data, an installed launcher would not import (.ci/wheel-demo runs one)."""
    assert (REPO / "balsam_mpi" / "node" / "trampoline.c").is_file()
    assert "node/*.c" in CONFIG["tool"]["setuptools"]["package-data"]["balsam_mpi"]
