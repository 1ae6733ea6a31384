"""`balsam-mpi app add|ls|show|rm`: the commands tasks run, as templates."""

from __future__ import annotations

from typing import Any

import click

from ..base.clibase import Group, echo, echo_json
from .context import CliContext, pass_ctx
from .table import echo_table


@click.group("app", cls=Group)
def app() -> None:
    """Apps: named command templates whose {placeholders} tasks fill."""


@app.command("add")
@click.argument("name")
@click.option("--command", "command", default=None, metavar="TEMPLATE",
              help="Command line template, e.g. 'echo hello {who}' (run as argv).")
@click.option("--python", "python", default=None, metavar="PACKAGE.MODULE:FUNCTION",
              help="Or call this function in a warm interpreter (docs/python-tasks.md).")
@click.option("--description", default="", help="What the app does.")
@click.option("--preprocess", default="", metavar="CMD", help="Run before each task.")
@click.option("--postprocess", default="", metavar="CMD", help="Run after each task.")
@click.option("--env-script", default="", metavar="PATH", help="Sourced before each task.")
@click.option("--shell", is_flag=True, help="Run the command through /bin/sh -c (values quoted).")
@click.option("--postprocess-on-error", is_flag=True, help="Postprocess failed runs too.")
@click.option("--postprocess-on-timeout", is_flag=True, help="Postprocess timed-out runs too.")
@click.option("--error-retry-limit", default="0", metavar="N",
              help="Automatic retries of a non-zero exit (default 0: none).")
@click.option("--no-task-dirs", "no_task_dirs", is_flag=True,
              help="Python apps: run calls in their workflow's directory, output in memory "
                   "(no directory and files per call; docs/python-tasks.md).")
@pass_ctx
def app_add(ctx: CliContext, name: str, command: str | None, python: str | None,
            description: str, preprocess: str, postprocess: str, env_script: str,
            shell: bool, postprocess_on_error: bool, postprocess_on_timeout: bool,
            error_retry_limit: str, no_task_dirs: bool) -> None:
    """Register app NAME: a --command template, or a --python function."""
    from ..tasks.pyapps import check_app as check_python_app
    from ..tasks.pyapps import check_task_dirs
    from ..tasks.validate import check_app, from_text

    retries = from_text("error_retry_limit", error_retry_limit)
    fields = {"description": description, "preprocess": preprocess,
              "postprocess": postprocess, "env_script": env_script}
    # Bad input is refused before connecting; giving both or neither: add_app says so.
    dirs = {"task_dirs": False} if no_task_dirs else {}
    if python is not None and command is None:
        check_python_app(name, python, {**fields, "shell": shell,
                                        "postprocess_on_error": postprocess_on_error,
                                        "postprocess_on_timeout": postprocess_on_timeout,
                                        **dirs})
    elif command is not None and python is None:
        check_task_dirs(not no_task_dirs, python=False)
        check_app(name, command, fields)
    app_id = ctx.client().add_app(
        name, command, python=python, description=description, preprocess=preprocess,
        postprocess=postprocess, env_script=env_script, shell=shell,
        postprocess_on_error=postprocess_on_error,
        postprocess_on_timeout=postprocess_on_timeout, error_retry_limit=retries, **dirs)
    echo(f"added app {name} (id {app_id})")


@app.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def app_ls(ctx: CliContext, as_json: bool) -> None:
    """List the apps."""
    apps = ctx.client().apps()
    if as_json:
        echo_json(apps)
        return
    echo_table(["NAME", "COMMAND", "DESCRIPTION", "OWNER"],
               [[a["name"], a["command"] if a["command"] is not None
                 else f"(python) {a['python']}"
                      + ("" if a.get("task_dirs", True) else " [no task dirs]"),
                 a["description"], a["owner"]]
                for a in apps],
               empty="no apps yet: add one with `balsam-mpi app add NAME --command '…'`")


@app.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def app_show(ctx: CliContext, name: str, as_json: bool) -> None:
    """Every field of app NAME."""
    row: dict[str, Any] = ctx.client().app(_app_name(name))
    if as_json:
        echo_json(row)
        return
    for key, value in row.items():
        echo(f"{key:>24}: {value}")


@app.command("rm")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def app_rm(ctx: CliContext, name: str, yes: bool) -> None:
    """Delete app NAME (refused while it has tasks)."""
    name = _app_name(name)
    client = ctx.client()
    client.app(name)
    if not yes:
        click.confirm(f"delete app {name}?", abort=True, err=True)
    client.delete_app(name)
    echo(f"deleted app {name}")


def _app_name(name: str) -> str:
    from ..base.values import name as checked

    return checked("name", name)


commands: list[click.Command] = [app]
