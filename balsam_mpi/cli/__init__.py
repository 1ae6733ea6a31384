"""`balsam-mpi`: the users' command line. Each submodule owns one family of commands.

Submodules export ``commands``, a list of click commands or groups added to the root
group here; they receive the :class:`CliContext` through ``pass_ctx``.
"""

from __future__ import annotations

import click

from ..base.clibase import Group, project_option
from .context import CliContext

_FAMILIES = ("apps", "tasks", "demo", "jobs", "report", "submit", "autoscale")


@click.group(cls=Group)
@project_option
@click.version_option(package_name="balsam_mpi")
@click.pass_context
def cli(ctx: click.Context, project_path: str | None) -> None:
    """Add, inspect and run tasks in a balsam project."""
    ctx.obj = CliContext(project_path)


def _register() -> None:
    import importlib

    for name in _FAMILIES:
        module = importlib.import_module(f"{__name__}.{name}")
        for command in module.commands:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="balsam-mpi")
