"""A command group named without a subcommand prints its help as help, not as an error.

Click (8.2 on) answers ``balsam-mpi task`` with its help inside a usage error; the
tools' one-line error rule flattened that help into one unreadable line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from balsam_mpi.cli import cli
from balsam_mpi.dbctl.cli import cli as dbctl


@pytest.mark.parametrize("group, args, prog, command", [
    (cli, [], "balsam-mpi", "task"),
    (cli, ["task"], "balsam-mpi", "wait"),
    (cli, ["report"], "balsam-mpi", "utilization"),
    (dbctl, [], "balsam-dbctl", "add-user"),
])
def test_a_group_without_a_subcommand_prints_its_help_on_lines_of_its_own(
        group: object, args: list[str], prog: str, command: str) -> None:
    result = CliRunner().invoke(group, args, prog_name=prog)  # type: ignore[arg-type]
    out = result.output
    assert result.exit_code == 2
    assert "error:" not in out
    assert out.startswith(f"Usage: {' '.join([prog, *args])} [OPTIONS] COMMAND")
    lines = out.splitlines()
    assert "Commands:" in lines
    assert any(line.split()[:1] == [command] for line in lines)


def test_a_wrong_subcommand_is_still_one_line() -> None:
    result = CliRunner().invoke(cli, ["task", "nosuch"], prog_name="balsam-mpi")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "error:" in result.output and "nosuch" in result.output
