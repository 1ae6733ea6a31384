"""Reading job ids out of qsub / sbatch output (no scheduler, no database)."""

from __future__ import annotations

import pytest

from balsam_mpi.batch.submit import SubmitError, parse_job_id


@pytest.mark.parametrize(("scheduler", "output", "job_id"), [
    ("pbs", "1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n",
     "1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"),
    ("pbs", "9\n", "9"),
    ("pbs", "qsub: note: project usage is high\n77[].pbs01\n", "77[].pbs01"),
    ("slurm", "5678\n", "5678"),
    ("slurm", "5678;perlmutter\n", "5678;perlmutter"),  # on cluster perlmutter (-M)
    ("cobalt", "Job routed to queue \"debug-cache-quad\".\n443210\n", "443210"),
])
def test_job_ids(scheduler: str, output: str, job_id: str) -> None:
    assert parse_job_id(scheduler, output) == job_id


@pytest.mark.parametrize(("scheduler", "output"), [
    ("pbs", ""), ("pbs", "Submitted 12 ; rm\n"), ("slurm", "Submitted batch job 12\n"),
    ("cobalt", "12.server\n"),
])
def test_no_job_id_is_an_error(scheduler: str, output: str) -> None:
    with pytest.raises(SubmitError, match="cannot find a job id"):
        parse_job_id(scheduler, output)
