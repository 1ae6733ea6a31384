"""The size and range caps on everything a user may store, defined once.

The client checks them (one line naming the field, exit 2, nothing written) and the
database enforces the same numbers with CHECK constraints, so a raw INSERT through psql
cannot plant a row that the client would have refused. A test compares the two.

Why these numbers: a task row travels in every claim and is held in the leader's memory
until it runs; a 60 MB parameter took a launcher to 361 MB. The caps are far above what a
command line can use (Linux's ARG_MAX is 2 MiB for argv and environment together), and far
above what the largest machines have (10,000 nodes, 8 GPUs and 256 hardware threads per
node), so they refuse nonsense without refusing real work.
"""

from __future__ import annotations

import re

# Text, in characters (Postgres ``char_length``).
NAME_MAX = 256  # workflow, name, app name, tag keys
COMMAND_MAX = 65_536  # an app's command, preprocess, postprocess, env_script
DESCRIPTION_MAX = 4_096
PATTERN_MAX = 4_096  # one input_files pattern
ARG_MAX = 65_536  # one element of args
ENV_VALUE_MAX = 65_536  # one environment value

# JSON documents and arrays, in bytes of their text form (``octet_length(x::text)``).
PARAMS_MAX_BYTES = 256 * 1024
TAGS_MAX_BYTES = 16 * 1024
ENV_MAX_BYTES = 128 * 1024
DATA_MAX_BYTES = 256 * 1024
ARGS_MAX_ITEMS = 4_096
# args in all, in bytes of UTF-8: 4,096 items of 64 KiB would otherwise allow a 256 MiB row;
# this is what one command line can carry anyway (ARG_MAX above, less the environment).
ARGS_MAX_BYTES = 1024 * 1024
INPUT_FILES_MAX_ITEMS = 256
JSON_MAX_DEPTH = 64  # nesting of params / tags / data
# A batch job's filters: every leader reads every live job's filters once a second (the
# division's read, launcher/preference.py), so one job's filters reach every launcher.
FILTERS_MAX_BYTES = 64 * 1024

# Integers: (minimum, maximum), both inclusive.
INT_RANGES: dict[str, tuple[int, int]] = {
    "num_nodes": (1, 100_000),
    "ranks_per_node": (1, 4_096),
    "threads_per_rank": (1, 4_096),
    "gpus_per_rank": (0, 64),
    "node_packing_count": (1, 4_096),
    "priority": (-1_000_000, 1_000_000),
    "error_retry_limit": (0, 1_000),
    "timeout_retry_limit": (0, 1_000),
    "lost_retry_limit": (0, 1_000),
}
WALL_TIME_MIN_MAX = 525_600.0  # one year, in minutes; finite and not negative
ID_MAX = 2**63 - 1  # task and batch job ids are bigint

# A batch job's lease, in seconds (config.lease_s, batch_jobs.lease_sec). At least a second
# (a heartbeat must fit twice), at most a day: longer leases only delay recovery, and an
# unbounded one (inf) made every sweep's "heartbeat + lease" overflow the interval type.
LEASE_S_MIN = 1.0
LEASE_S_MAX = 86_400.0

# Output kept in the database for a failed task (the rest stays in task.out / task.err).
OUTPUT_TAIL_MAX = 4_096

# Python tasks (docs/python-tasks.md). A result is held by the leader until its flush, as
# params are until the task runs: the same cap. A bigger one belongs in a file in the
# task's directory.
RESULT_MAX_BYTES = 256 * 1024  # a return value's JSON text, in bytes
PYTHON_PATH_MAX = 1_024  # an app's "package.module:function", in characters
# ... and its shape: dotted identifiers, a colon, dotted identifiers (the client, the
# database and each warm interpreter check it; defined here, where an interpreter can
# import it cheaply).
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
PYTHON_PATH = re.compile(rf"{_NAME}(?:\.{_NAME})*:{_NAME}(?:\.{_NAME})*")
PYTHON_MODULE = re.compile(rf"{_NAME}(?:\.{_NAME})*")  # a module alone (python_preload)
