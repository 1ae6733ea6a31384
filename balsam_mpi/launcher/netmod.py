"""Which MPICH network module the launcher's own ranks use under a multi-node srun.

The PyPI ``mpich`` wheel (``pip install mpich``, what ``setup_env.sh`` installs) is built
with two network modules, UCX and OFI, and picks UCX. Under ``srun --mpi=pmi2`` on more
than one node its ranks then fail in ``MPI_Init`` at random — or hang there — when two
bugs meet (found here against Slurm 22.05, reproduced on demand; docs/mpi-tasks.md):

* MPICH's UCX module publishes each node's address as 4,096 bytes, though a UCX address
  is about 200: the rest is whatever lies next to it in the heap, hex-encoded, in nine
  PMI puts of up to 1,022 characters (MPICH's ``MPIDI_UCX_comm_addr_exchange`` passes
  ``MPID_MAX_BC_SIZE`` as the length);
* Slurm's pmi2 plugin reads a PMI-1 request with one ``read()`` of at most 1,024 bytes, so
  a put whose line is longer is cut in two: the first half is stored without its value,
  the second is refused ("request not begin with 'cmd='"), and the rank waits for an
  answer that never comes or starts UCX with a garbled address.

Whether a line passes 1,024 bytes depends on the heap's contents, so the same job fails
in one run and not the next. With the OFI module a node's address is one put of 19
characters. So, before ``MPI_Init``, a launcher rank started by srun across several nodes,
whose MPI is an MPICH that has both modules, asks for OFI — unless the user chose a
module (``MPIR_CVAR_CH4_NETMOD`` or ``MPICH_CH4_NETMOD``), which always wins. The
launcher's ranks exchange only small control messages, which OFI (over the site's
fabric, or TCP) carries as well. Tasks do not inherit the choice: their MPI may be
another one (``node/mpienv.py``, ``BALSAM_MPI_START_VARS``).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

NETMOD_VAR = "MPIR_CVAR_CH4_NETMOD"
USER_CHOICES = (NETMOD_VAR, "MPICH_CH4_NETMOD")
# Slurm's PMI wire-up of a step srun started (hydra's ranks carry MPI_LOCALNRANKS too).
_SRUN_PMI = ("PMI_FD", "PMI_SIZE")


def mpich_netmods(library_version: str) -> frozenset[str]:
    """The network modules of an MPICH, from ``MPI_Get_library_version``'s
    ``MPICH Device:    ch4:ucx ofi`` line; empty for any other MPI."""
    for line in library_version.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MPICH Device":
            words = value.split()
            if words and words[0].startswith("ch4:"):
                words[0] = words[0][len("ch4:"):]
                return frozenset(w for w in words if w)
    return frozenset()


def srun_across_nodes(environ: Mapping[str, str]) -> bool:
    """Started by srun, with Slurm's PMI, in a step of more than one node."""
    if "SLURM_STEP_ID" not in environ or "MPI_LOCALNRANKS" in environ:
        return False
    if not any(name in environ for name in _SRUN_PMI):
        return False
    nodes = environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or ""
    return nodes.isdigit() and int(nodes) > 1


def choose(environ: Mapping[str, str], library_version: str) -> str | None:
    """The module to ask for, or None to leave MPI's own choice (see the module)."""
    if any(name in environ for name in USER_CHOICES):
        return None
    if not srun_across_nodes(environ):
        return None
    netmods = mpich_netmods(library_version)
    return "ofi" if {"ucx", "ofi"} <= netmods else None


def apply(environ: MutableMapping[str, str], library_version: str,
          start_vars: str) -> str | None:
    """Set the choice in ``environ`` (before MPI_Init reads it) and name the variable in
    ``start_vars`` so that tasks do not inherit it; returns the choice."""
    choice = choose(environ, library_version)
    if choice is not None:
        environ[NETMOD_VAR] = choice
        named = [n for n in environ.get(start_vars, "").split(",") if n]
        environ[start_vars] = ",".join([*named, NETMOD_VAR])
    return choice
