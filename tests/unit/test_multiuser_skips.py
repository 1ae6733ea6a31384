"""The multi-user tier, run by a user who is not root, skips with its reason: nothing of
it runs (it used to error 22 times: its session fixtures tried to create accounts)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run the tier as another user"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no 'nobody' account"
    if not Path(SYSTEM_PYTHON).exists():
        return f"needs {SYSTEM_PYTHON}"
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=False).stdout.strip()
    if version != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is {version}, not this venv's Python: cannot share its packages"
    probe = subprocess.run(["su", "-s", "/bin/sh", "nobody", "-c", f"test -r {REPO}/tests"],
                           check=False)
    if probe.returncode != 0:
        return f"{REPO} is not readable by nobody"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
@pytest.mark.timeout(300)
def test_non_root_user_gets_skips_with_the_reason() -> None:
    site = sysconfig.get_paths()["purelib"]
    env = (f"PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={site}:{REPO} HOME=/tmp "
           f"BALSAM_MU_PREFIX={os.environ.get('BALSAM_MU_PREFIX', 'proj')}")
    done = subprocess.run(
        ["su", "-s", "/bin/sh", "nobody", "-c",
         f"cd {REPO} && env {env} {SYSTEM_PYTHON} -m pytest -p no:cacheprovider -q -rs "
         "tests/multiuser"], capture_output=True, text=True, timeout=240, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "error" not in out.splitlines()[-1], out
    assert " skipped" in out.splitlines()[-1] and "passed" not in out.splitlines()[-1], out
    assert "run them as root" in out  # the reason is shown
