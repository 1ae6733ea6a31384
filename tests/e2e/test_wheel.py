"""The built wheel carries every file the package reads at run time, as regular files with
the repository's bytes: templates, named SQL and migrations, the activation scripts, and
``py.typed`` (so type checkers use the package's hints). CI also installs this wheel in a
fresh venv and runs the demo from it (``.ci/run``)."""

from __future__ import annotations

import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "balsam_mpi"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(out), str(REPO)], check=True, timeout=540)
    [built] = out.glob("balsam_mpi-*.whl")
    return zipfile.ZipFile(built)


def _shipped() -> list[Path]:
    files = [*PACKAGE.glob("templates/*.sh"), *PACKAGE.glob("sql/*.sql"),
             *PACKAGE.glob("sql/migrations/*.sql"), *PACKAGE.glob("scripts/*"),
             PACKAGE / "py.typed"]
    return sorted(files)


def test_the_wheel_carries_the_package_data_as_regular_files(wheel: zipfile.ZipFile) -> None:
    members = {i.filename: i for i in wheel.infolist()}
    expected = _shipped()
    assert len([p for p in expected if p.parent.name == "templates"]) == 4
    for path in expected:
        name = path.relative_to(REPO).as_posix()
        assert name in members, f"{name} is not in the wheel"
        mode = members[name].external_attr >> 16
        assert not mode or stat.S_ISREG(mode), f"{name} is not a regular file in the wheel"
        assert wheel.read(name) == path.read_bytes(), f"{name} differs from the repository's"


def test_the_wheel_installs_the_activation_scripts_and_commands(
        wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    data = [n for n in names if ".data/scripts/" in n]
    assert sorted(Path(n).name for n in data) == ["balsamactivate", "balsamdeactivate"]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "balsam-mpi = balsam_mpi.cli:main" in text
    assert "balsam-dbctl = balsam_mpi.dbctl.cli:main" in text
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Python: >=3.11" in wheel.read(metadata).decode()
