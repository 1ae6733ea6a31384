"""`python -m balsam_mpi`: the launcher (one rank per node under mpiexec)."""

from __future__ import annotations


def main() -> None:
    import sys

    from .base.safepath import check_start

    refusal = check_start("balsam_mpi")
    if refusal is not None:
        print(refusal, file=sys.stderr)
        sys.exit(2)
    from .launcher.launch import main as launch_main

    launch_main()


if __name__ == "__main__":
    main()
