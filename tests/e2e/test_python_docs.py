"""The complete example of docs/python-tasks.md runs as written on a fresh project: the
blocks marked ``<!-- example: NAME -->`` are written out and run.sh is run with bash (at
a smaller count: ``N_EVALS``; the page reports a run at 10,000)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)
DOC = Path(__file__).resolve().parents[2] / "docs" / "python-tasks.md"
_BLOCK = re.compile(r"<!-- example: (\S+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)


def example_files() -> dict[str, str]:
    return {name: body + "\n" for name, body in _BLOCK.findall(DOC.read_text())}


def test_the_example_has_its_three_files() -> None:
    assert set(example_files()) == {"evals.py", "driver.py", "run.sh"}


def test_the_example_runs_as_written_on_a_fresh_project() -> None:
    n = int(os.environ.get("BALSAM_DOCS_N_EVALS", "300"))
    where = Path(tempfile.mkdtemp(prefix="bdoc-", dir="/tmp"))
    os.chmod(where, 0o755)  # the server account must reach the project when run as root
    for name, body in example_files().items():
        (where / name).write_text(body)
    env = {k: v for k, v in os.environ.items()
           if k not in ("BALSAM_DB_PATH", "BALSAM_DB_NAME", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["N_EVALS"] = str(n)
    try:
        proc = subprocess.run(["bash", "run.sh"], cwd=where, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=280)
        out = proc.stdout
        assert proc.returncode == 0, out
        assert f"added {n} evaluations" in out, out
        assert re.search(rf"^{n} evaluations in [0-9.]+ s, 0 failed; best f = ", out,
                         re.MULTILINE), out
        found = re.search(r"^refined: f = ([0-9.]+) at", out, re.MULTILINE)
        assert found and float(found.group(1)) < 1e-3, out  # a minimum of Himmelblau's
    finally:
        if (where / "campaign" / "server-info.json").exists():
            subprocess.run([str(Path(sys.executable).parent / "balsam-dbctl"), "--project",
                            str(where / "campaign"), "stop", "--fast"], env=env,
                           capture_output=True, timeout=60)
        shutil.rmtree(where, ignore_errors=True)
