"""One exception root, and the subclasses that callers must tell apart.

Every message is written for the person at the terminal: it says what went wrong and what
to do next. The CLIs print ``str(exc)`` as one line and exit non-zero; no traceback.
"""

from __future__ import annotations


class BalsamError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class UsageError(BalsamError):
    """Bad input from the user: a flag, a file, a value. Nothing was written."""

    exit_code = 2


class InputError(UsageError):
    """One bad value (a field, a flag, a setting, a line of a file); the message names it."""


class Unsupported(BalsamError):
    """This system lacks something the program cannot run without (a kernel feature a
    container may also withhold); refused before anything is written: exit status 2."""

    exit_code = 2


class ProjectError(BalsamError):
    """The project directory is missing, malformed or unsafe (modes, owner, paths)."""


class BadProjectPath(ProjectError, UsageError):
    """The project named by the user is not a usable project path: not given, not a
    directory, not a balsam project. Bad input, so exit status 2 (UsageError's)."""


class BadControlFile(ProjectError, InputError):
    """A control file of the project (server-info.json) that cannot be used as written:
    not JSON, or a field of the wrong kind or out of range; the message names the file
    and the field. Bad input (it is edited by hand, if at all): exit status 2."""


class BadTemplate(ProjectError, UsageError):
    """A batch-script template that cannot be used as written (a byte that is not UTF-8,
    an unknown placeholder); the message names its line. Bad input: exit status 2."""


class PermissionDenied(BalsamError):
    """The caller may not do this (not the owner, not in the group, not authorized)."""


class ServerError(BalsamError):
    """The project's PostgreSQL server is down, unreachable, or not the one we expect."""


class ServerNotRunning(ServerError):
    """The server is not running; the message says who can start it."""


class DatabaseError(BalsamError):
    """A database operation failed; translated from the driver at one boundary (base/db.py)."""


class NotFound(BalsamError):
    """A named object (task, app, user, batch job) does not exist."""


class Conflict(BalsamError):
    """The request contradicts the current state (illegal transition, cycle, duplicate)."""
