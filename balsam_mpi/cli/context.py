"""The context object every `balsam-mpi` subcommand receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from ..base.project import Project

if TYPE_CHECKING:
    from ..tasks.client import Client


@dataclass
class CliContext:
    project_path: str | None
    _client: Client | None = field(default=None, repr=False)

    def project(self) -> Project:
        return Project.from_env(self.project_path)

    def client(self) -> Client:
        """One Client (one connection) per command, opened on first use."""
        if self._client is None:
            from ..tasks.client import Client

            self._client = Client(self.project())
        return self._client


pass_ctx = click.make_pass_decorator(CliContext)
