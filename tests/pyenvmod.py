"""A module whose import changes the environment, as some libraries' do (a Python
task's target, imported by the warm interpreters in test_pypool)."""

from __future__ import annotations

import os

os.environ["SET_AT_IMPORT"] = "yes"
os.environ.pop("FOO", None)


def read() -> dict[str, object]:
    return {"set": os.environ.get("SET_AT_IMPORT"), "foo": os.environ.get("FOO"),
            "pid": os.getpid()}
