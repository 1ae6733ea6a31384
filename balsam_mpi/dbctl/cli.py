"""`balsam-dbctl`: the project owner's commands (`status` / `activate` for everyone,
`recover` for members)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from ..base import values
from ..base.clibase import Group, echo, echo_json, notices, project_option
from ..base.errors import BadProjectPath
from ..base.project import Project
from . import access, lifecycle, recover, status


@dataclass
class Ctx:
    """The context object every subcommand receives: which project to act on."""

    project_path: str | None

    def project(self) -> Project:
        return Project.from_env(self.project_path)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(cls=Group)
@project_option
@click.version_option(package_name="balsam_mpi")
@click.pass_context
def cli(ctx: click.Context, project_path: str | None) -> None:
    """Create and run a balsam project's PostgreSQL server, and manage who may use it."""
    ctx.obj = Ctx(project_path)


@cli.command()
@click.argument("path")
@click.option("--group", help="UNIX group of collaborators (default: your primary group).")
@click.option("--port", type=int, help="TCP port (default: a free one, kept from then on).")
@click.option("--listen", default="localhost", show_default=True,
              help="Addresses for TCP (comma-separated); loopback only unless you say so.")
@click.option("--server-user", help="As root: the unprivileged account that runs Postgres "
              "(default: balsam, created if missing).")
def init(path: str, group: str | None, port: int | None, listen: str,
         server_user: str | None) -> None:
    """Create a project directory with its own PostgreSQL server, and start it."""
    _checked(("path", path, values.path), ("--group", group, values.unix_name),
             ("--server-user", server_user, values.unix_name),
             ("--listen", listen, lambda f, v: values.text(f, v, 1024)))
    outcome = lifecycle.init_project(path, group=group, port=port, listen=listen,
                                     server_user=server_user)
    notices(outcome.notices)
    info = outcome.info
    echo(f"created {os.path.abspath(path)}: server running on {info.host}:{info.port} "
               f"as {info.server_name}, group {info.group}")
    echo("activate it with:")
    echo(f"  source balsamactivate {os.path.abspath(path)}")


@cli.command()
@click.option("--takeover", is_flag=True,
              help="Start here although the server was last started on another host "
                   "(only when that host is gone).")
@pass_ctx
def start(ctx: Ctx, takeover: bool) -> None:
    """Start the project's server (owner only)."""
    outcome = lifecycle.start_server(ctx.project(), takeover=takeover)
    notices(outcome.notices)
    echo(f"running on {outcome.info.host}:{outcome.info.port}")


@cli.command()
@click.option("--fast", is_flag=True, help="Disconnect connected clients instead of refusing.")
@pass_ctx
def stop(ctx: Ctx, fast: bool) -> None:
    """Stop the project's server (owner only)."""
    outcome = lifecycle.stop_server(ctx.project(), fast=fast)
    echo("\n".join(outcome.notices))


@cli.command()
@pass_ctx
def restart(ctx: Ctx) -> None:
    """Stop (disconnecting clients) and start the server (owner only)."""
    outcome = lifecycle.restart_server(ctx.project())
    notices(outcome.notices)
    echo(f"running on {outcome.info.host}:{outcome.info.port}")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status_cmd(ctx: Ctx, as_json: bool) -> None:
    """Is the server running, where, who owns it, and how big is it."""
    facts = status.server_status(ctx.project())
    if as_json:
        echo_json(facts)
    else:
        echo(status.format_status(facts))


@cli.command("fix-perms")
@pass_ctx
def fix_perms(ctx: Ctx) -> None:
    """Re-apply the project's owners and modes (owner only)."""
    changed = lifecycle.fix_perms(ctx.project()) + access.fix_viewers(ctx.project())
    echo("\n".join(changed) if changed else "all modes were already right")


@cli.command()
@pass_ctx
def migrate(ctx: Ctx) -> None:
    """Apply the schema migrations the database lacks (owner only)."""
    applied = lifecycle.migrate(ctx.project())
    echo(f"applied migrations {applied}" if applied else "the schema is up to date")


@cli.command()
@pass_ctx
def verify(ctx: Ctx) -> None:
    """Check the schema version, roles, instance record and the directory's modes."""
    problems = lifecycle.verify(ctx.project())
    if problems:
        for line in problems:
            echo(f"problem: {line}", err=True)
        sys.exit(1)
    echo("ok")


@cli.command()
@click.argument("path", required=False)
@click.option("--enroll", is_flag=True,
              help="Without credentials for this project, request access first "
                   "(what `source balsamactivate` does; job scripts leave it off).")
@pass_ctx
def activate(ctx: Ctx, path: str | None, enroll: bool) -> None:
    """Print the shell code `source balsamactivate PATH` evaluates (for job scripts)."""
    chosen = path if path is not None else ctx.project_path
    if chosen is None:
        raise BadProjectPath("usage: balsam-dbctl activate PROJECT")
    chosen = str(Project.from_env(chosen).root)
    code, messages = status.activation_code(chosen, enroll=enroll)
    notices(messages)
    click.echo(code, nl=False)  # shell code for eval, already quoted: passed on exact


@cli.command("add-user")
@click.argument("user")
@click.option("--read-only", is_flag=True, help="A viewer: reads everything, writes nothing.")
@click.option("--app-admin", is_flag=True, help="May also add and change apps.")
@pass_ctx
def add_user(ctx: Ctx, user: str, read_only: bool, app_admin: bool) -> None:
    """Authorize USER (owner only; re-running is harmless) and apply their request."""
    values.unix_name("user", user)
    echo("\n".join(access.add_user(ctx.project(), user, read_only=read_only,
                                         app_admin=app_admin)))


@cli.command("drop-user")
@click.argument("user")
@pass_ctx
def drop_user(ctx: Ctx, user: str) -> None:
    """Revoke USER and end their sessions; their tasks stay (owner only)."""
    values.unix_name("user", user)
    echo("\n".join(access.drop_user(ctx.project(), user)))


@cli.command("users")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def users(ctx: Ctx, as_json: bool) -> None:
    """Who may use the database: role, kind, enrolled or pending (owner only)."""
    found = access.list_users(ctx.project())
    if as_json:
        echo_json(access.users_as_dicts(found))
    else:
        echo(access.format_users(found))


@cli.command("connections")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def connections(ctx: Ctx, as_json: bool) -> None:
    """Live sessions: user, client address, application, since (owner only)."""
    rows = access.connections(ctx.project())
    if as_json:
        echo_json(rows)
    else:
        echo(access.format_connections(rows))


@cli.command("recover")
@click.option("--job", "job_text", metavar="ID", help="Only this batch job.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def recover_cmd(ctx: Ctx, job_text: str | None, as_json: bool) -> None:
    """Requeue the tasks of batch jobs whose lease expired, and mark those jobs LOST
    (any member; live launchers do this every few seconds anyway)."""
    job_id = None if job_text is None else values.id_from_text("--job", job_text, "batch job")
    found = recover.recover(ctx.project(), job_id)
    if as_json:
        echo_json(recover.as_dicts(found))
    else:
        echo(recover.format_recovered(found))


@cli.command("prune")
@click.option("--workflow", "workflows", multiple=True, metavar="W",
              help="A finished workflow to prune (repeatable; all must be prunable).")
@click.option("--all-finished", is_flag=True,
              help="Every workflow that may go; the others are kept and listed with why.")
@click.option("--older-than", metavar="DURATION",
              help="Only workflows unchanged for this long (12h, 7d).")
@click.option("--dirs-only", is_flag=True,
              help="Remove working directories only; keep tasks and history "
                   "(any member, for workflows wholly theirs).")
@click.option("--dry-run", is_flag=True, help="Say what would go; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def prune_cmd(ctx: Ctx, workflows: tuple[str, ...], all_finished: bool,
              older_than: str | None, dirs_only: bool, dry_run: bool, yes: bool,
              as_json: bool) -> None:
    """Forget finished workflows: working directories, tasks, events and the batch jobs
    that ran only them (the owner; see docs/retention.md)."""
    from ..reports.timefmt import parse_duration
    from .prune import format_outcome, prune

    older = None if older_than is None else parse_duration(older_than, "--older-than")
    args: dict[str, Any] = {"workflows": workflows, "all_finished": all_finished,
                            "older_than_s": older, "dirs_only": dirs_only}
    if not dry_run and not yes:
        plan = prune(ctx.project(), dry_run=True, **args)
        if not plan.workflows:
            echo(format_outcome(plan))
            return
        echo(format_outcome(plan), err=True)
        click.confirm("prune?", abort=True, err=True)
    outcome = prune(ctx.project(), dry_run=dry_run, **args)
    if as_json:
        echo_json(outcome.as_dict())
    else:
        echo(format_outcome(outcome))


@cli.command("request-access")
@click.option("--if-needed", is_flag=True,
              help="Do nothing when ~/.pgpass already holds a password for this project.")
@pass_ctx
def request_access(ctx: Ctx, if_needed: bool) -> None:
    """Ask for access: keep a password in ~/.pgpass, hand over only its verifier."""
    for line in access.request_access(ctx.project(), if_needed=if_needed):
        echo(line, err=True)


def _checked(*given: tuple[str, Any, Callable[[str, Any], Any]]) -> None:
    """Check the values given (None: not given) before anything runs."""
    for field, value, check in given:
        if value is not None:
            check(field, value)


def main() -> None:
    cli(prog_name="balsam-dbctl")
