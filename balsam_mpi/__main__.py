"""`python -m balsam_mpi`: the launcher (one rank per node under mpiexec)."""

from __future__ import annotations


def main() -> None:
    from .base.safepath import exit_if_unsafe

    exit_if_unsafe("balsam_mpi")
    from .launcher.launch import main as launch_main

    launch_main()


if __name__ == "__main__":
    main()
