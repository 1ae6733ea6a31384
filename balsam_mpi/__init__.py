"""balsam_mpi: an MPI-native task launcher over a shared, project-local PostgreSQL database.

Importing this package has no side effects: it imports neither mpi4py nor psycopg and
opens no connection. The public API names are resolved lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["BalsamError", "Client", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .base.errors import BalsamError
    from .tasks.client import Client


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import balsam_mpi` cheap and free of mpi4py/psycopg.
    if name == "Client":
        from .tasks.client import Client

        return Client
    if name == "BalsamError":
        from .base.errors import BalsamError

        return BalsamError
    raise AttributeError(f"module 'balsam_mpi' has no attribute {name!r}")
