"""What both command-line tools share: one-line errors, JSON output, :func:`echo`, which
spells out the control characters of stored values (``termtext``), and
:func:`signals_deferred` for work that must not be cut in the middle."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import click

from .errors import BalsamError
from .project import ENV_VAR
from .termtext import visible

# Both tools name the project the same way: a flag, else $BALSAM_DB_PATH.
project_option = click.option(
    "--project", "project_path", metavar="PATH", envvar=ENV_VAR,
    help=f"The project directory (default: ${ENV_VAR}).")


class Group(click.Group):
    """A click group that prints every error as one line (no traceback, no usage block)
    and exits non-zero: 2 for bad input (click's own parsing included), else the error's
    own status."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the root's own options
            _usage_line(exc, info_name or "")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's options, arguments or name
            _usage_line(exc, ctx.find_root().info_name or "")
        except BalsamError as exc:
            echo(f"{ctx.find_root().info_name}: error: {_one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")) if "\n" in text else text


def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """A line (or lines) for a person: whatever stored value it holds is shown, never
    acted on by the terminal (``termtext.visible``)."""
    click.echo(visible(text), err=err, nl=nl)


# Click 8.2 on answers a group named without a subcommand with its help, raised as a usage
# error; older versions print it themselves. It is help, not an error: printed whole.
_NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    t for t in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if t is not None)


def _usage_line(exc: click.UsageError, root: str) -> NoReturn:
    if isinstance(exc, _NO_ARGS_IS_HELP) and exc.ctx is not None:
        click.echo(exc.ctx.get_help(), err=True)
        raise click.exceptions.Exit(2)
    where = exc.ctx.command_path if exc.ctx is not None else root
    hint = f" (see `{where} --help`)" if where else ""
    echo(f"{where or root}: error: {_one_line(exc.format_message())}{hint}", err=True)
    raise click.exceptions.Exit(2)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def echo_json_list(items: Iterable[Any]) -> None:
    """Like ``echo_json(list(items))``, byte for byte, but each item is written as it
    comes: a listing of a million tasks once held them all, and their JSON text, at
    once (8.9 GB for ``task ls --limit 1000000 --json``)."""
    first = True
    for item in items:
        text = json.dumps(item, indent=2, sort_keys=True, default=str)
        click.echo(("[\n" if first else ",\n") + textwrap.indent(text, "  "), nl=False)
        first = False
    click.echo("[]" if first else "\n]")


def notices(lines: list[str]) -> None:
    for line in lines:
        echo(line, err=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


class Deferred(threading.Event):
    """Set by SIGTERM or SIGINT inside :func:`signals_deferred`; ``signum`` says which."""

    signum = 0


@contextlib.contextmanager
def signals_deferred() -> Iterator[Deferred]:
    """SIGTERM and SIGINT only set the event while the block runs (a submission between
    its row and the scheduler's answer, a loop between two looks); the handlers before
    are put back at the end. The caller decides what an interrupted run does after."""
    stop = Deferred()

    def handler(signum: int, _frame: Any) -> None:
        stop.signum = signum
        stop.set()

    before = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, old in before.items():
            signal.signal(s, old)
