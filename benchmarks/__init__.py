"""balsam_mpi's benchmark harness: `python -m benchmarks run SCENARIO… [--quick]`."""
