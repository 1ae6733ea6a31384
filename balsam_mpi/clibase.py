"""What both command-line tools share: one-line errors and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .errors import BalsamError
from .project import ENV_VAR

# Both tools name the project the same way: a flag, else $BALSAM_DB_PATH.
project_option = click.option(
    "--project", "project_path", metavar="PATH", envvar=ENV_VAR,
    help=f"The project directory (default: ${ENV_VAR}).")


class Group(click.Group):
    """A click group that prints our errors as one line (no traceback) and exits non-zero."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BalsamError as exc:
            click.echo(f"{ctx.find_root().info_name}: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def notices(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)


def is_tty() -> bool:
    return sys.stdout.isatty()
