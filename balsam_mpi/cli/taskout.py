"""`balsam-mpi task out ID [--err] [--tail N] [--follow]`: what a task wrote, read back
safely, and with ``--follow`` as it writes it, until the task ends.

The files are found and opened by ``tasks/outputs.py``, which follows nothing planted in
``data/``. Down a pipe or into a file the bytes are passed on as the task wrote them; on
a terminal they are decoded and whatever the terminal would act on is spelled out
(``base/termtext``), since a task's output is the one text here its program alone chose.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterable
from typing import Any

import click

from ..base.clibase import echo
from ..base.errors import NotFound
from ..base.termtext import visible
from ..tasks import follow as follower
from ..tasks import outputs
from ..tasks.waiting import ENDED
from .context import CliContext, pass_ctx
from .taskargs import count, task_id


@click.command("out")
@click.argument("tid", metavar="ID")
@click.option("--err", "stream", flag_value="err", default="out",
              help="task.err instead of task.out.")
@click.option("--tail", "tail", default=None, metavar="N", help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True,
              help="Then print what it writes as it writes it, until it ends.")
@click.option("--pre", "step", flag_value="preprocess", default="task",
              help="Its app's preprocessing output (preprocess.out / .err).")
@click.option("--post", "step", flag_value="postprocess",
              help="Its app's postprocessing output (postprocess.out / .err).")
@pass_ctx
def task_out(ctx: CliContext, /, tid: str, stream: str, tail: str | None,
             follow: bool, step: str) -> None:
    """What a task wrote: its task.out (or --err: task.err), every run's."""
    lines = None if tail is None else count(tail, "tail")
    client = ctx.client()
    task = client.get(task_id(tid))
    if not client.has_own_dir(task):
        _stored_tail(task)
        return
    tty = sys.stdout.isatty()
    if follow:
        follower.follow(client, task, stream, lines, lambda chunks: _write(chunks, tty),
                        lambda note: echo(note, err=True), step=step)
        return
    try:
        with client.outputs(task, stream, step) as files:
            for i, f in enumerate(files):
                if len(files) > 1:  # as tail(1) marks each of several files
                    echo(("\n" if i else "") + f"==> {f.name} <==")
                _write(f.chunks(lines), tty)
    except outputs.NoDirectory as exc:
        if task["state"] not in ENDED:
            raise
        # Killed, or failed before its directory was made (a parent failed, its params
        # did not fit its app): no launcher will ever make it, so say so.
        why = f" ({task['state_message']})" if task["state_message"] else ""
        raise NotFound(f"task {task['id']} ended {task['state']} without output{why}: "
                       f"{exc.missing}") from None


def _stored_tail(task: dict[str, Any]) -> None:
    """A Python call without a task directory wrote to memory: only a failed call's
    tail was kept, in the task's row."""
    if not task["output_tail"]:
        raise NotFound(f"task {task['id']} keeps no output files (a Python app without task "
                       "directories), and no output tail was stored: it is kept only when a "
                       "call fails")
    echo(f"(task {task['id']}: a Python app without task directories keeps no output files; "
         "this is the output tail stored when the call failed: its stderr's, or its "
         "stdout's when that was empty)", err=True)
    _write([task["output_tail"].encode()], sys.stdout.isatty())


def _write(chunks: Iterable[bytes], tty: bool) -> None:
    if not tty:
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span reads
    for chunk in chunks:
        click.echo(visible(decoder.decode(chunk)), nl=False)
    click.echo(visible(decoder.decode(b"", final=True)), nl=False)


def register(group: click.Group) -> None:
    group.add_command(task_out)
