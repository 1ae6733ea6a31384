"""The user's side of the database: the Python API (``Client``), adding tasks (one writer),
validation, task files, filters, ``task why``, task states, Python apps, waiting on results
and an ``Executor``.

See docs/architecture.md §2."""
