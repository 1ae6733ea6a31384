"""The autoscaler's decision (batch/elastic.py `decide`) and what it reads from the
scheduler (batch/schedq.py parsers): pure functions, no database or scheduler."""

from __future__ import annotations

import pytest

from balsam_mpi.batch import schedq
from balsam_mpi.batch.elastic import ActiveJob, Backlog, Scaling, decide, max_claimable_nodes


def _backlog(tasks: int, nodes: float, widest: int = 1) -> Backlog:
    return Backlog(tasks=tasks, nodes=nodes, widest=widest, too_wide=0)


def test_no_work_no_job() -> None:
    d = decide(_backlog(0, 0.0), [], Scaling(max_nodes=8))
    assert d.nodes == 0 and "no runnable work" in d.why


def test_the_uncovered_nodes_rounded_up_within_the_limits() -> None:
    s = Scaling(max_nodes=8, min_nodes=2, max_queued=3)
    assert decide(_backlog(10, 0.625), [], s).nodes == 2  # 10 tasks, 16 to a node: min 2
    assert decide(_backlog(50, 5.2), [], s).nodes == 6
    assert decide(_backlog(500, 50.0), [], s).nodes == 8
    # a queued job counts against the backlog; a running one does not (it is full: what
    # it could take it has claimed)
    queued = [ActiveJob(1, "QUEUED", 4), ActiveJob(2, "RUNNING", 8)]
    assert decide(_backlog(50, 5.2), queued, s).nodes == 2
    d = decide(_backlog(30, 3.5), queued, s)
    assert d.nodes == 0 and "cover" in d.why


def test_the_widest_task_sets_the_least() -> None:
    """A launcher runs a multi-node task on its worker nodes only (the leader's node runs
    single-node tasks: launcher/dispatch.py max_nodes), so a task of w > 1 nodes needs a
    job of w + 1."""
    assert decide(_backlog(1, 3.0, widest=3), [], Scaling(max_nodes=4)).nodes == 4
    assert decide(_backlog(2, 0.5, widest=3), [], Scaling(max_nodes=4)).nodes == 4
    assert decide(_backlog(2, 0.5, widest=1), [], Scaling(max_nodes=4)).nodes == 1
    assert decide(_backlog(1, 2.0, widest=2), [], Scaling(max_nodes=8)).nodes == 3
    assert max_claimable_nodes(1) == 1 and max_claimable_nodes(2) == 1
    assert max_claimable_nodes(5) == 4


def test_max_queued_waits() -> None:
    s = Scaling(max_nodes=4, max_queued=2)
    queued = [ActiveJob(1, "QUEUED", 1), ActiveJob(2, "QUEUED", 1)]
    d = decide(_backlog(100, 100.0), queued, s)
    assert d.nodes == 0 and "--max-queued" in d.why
    assert decide(_backlog(100, 100.0), queued[:1], s).nodes == 4


def test_max_total_nodes_caps_and_waits() -> None:
    s = Scaling(max_nodes=8, min_nodes=2, max_queued=5, max_total_nodes=20)
    running = [ActiveJob(1, "RUNNING", 8), ActiveJob(2, "RUNNING", 7)]
    assert decide(_backlog(100, 100.0), running, s).nodes == 5
    d = decide(_backlog(100, 100.0), [*running, ActiveJob(3, "RUNNING", 4)], s)
    assert d.nodes == 0 and "--max-total-nodes" in d.why  # 1 node left, 2 the least


def test_squeue_states_by_phase() -> None:
    text = ("101|PENDING\n102|RUNNING\n103|CANCELLED\n104|COMPLETED\n105|CONFIGURING\n"
            "106_1|COMPLETED\n106_2|RUNNING\n107+0|FAILED\n108|REQUEUED\nnot a line\n")
    got = schedq.parse_squeue(text)
    assert got == {"101": ("waiting", "PENDING"), "102": ("running", "RUNNING"),
                   "103": ("ended", "CANCELLED"), "104": ("ended", "COMPLETED"),
                   "105": ("running", "CONFIGURING"), "106": ("running", "RUNNING"),
                   "107": ("ended", "FAILED"), "108": ("waiting", "REQUEUED")}


def test_qstat_states_by_phase() -> None:
    text = ("Job Id: 11.pbs.example.org\n    Job_Name = balsam\n    job_state = Q\n\n"
            "Job Id: 12.pbs.example.org\n    job_state = R\n"
            "Job Id: 13.pbs.example.org\n    job_state = F\n    Exit_status = 271\n")
    assert schedq.parse_qstat(text) == {"11.pbs.example.org": ("waiting", "Q"),
                                        "12.pbs.example.org": ("running", "R"),
                                        "13.pbs.example.org": ("ended", "F")}


# What Torque's ``qstat -x -f`` prints: XML on one line (src/cmds/qstat.c,
# create_full_job_xml), its completed jobs in state C for keep_completed seconds.
TORQUE_XML = ('<?xml version="1.0"?>\n<Data><Job><Job_Id>11.torque01.example.org</Job_Id>'
              "<Job_Name>a&amp;b &lt;x&gt;</Job_Name><Job_Owner>alice@login1</Job_Owner>"
              "<job_state>R</job_state><Resource_List><nodes>2</nodes>"
              "<walltime>00:30:00</walltime></Resource_List></Job>"
              "<Job><Job_Id>12.torque01.example.org</Job_Id><job_state>Q</job_state></Job>"
              "<Job><Job_Id>13.torque01.example.org</Job_Id><job_state>C</job_state>"
              "<exit_status>271</exit_status></Job></Data>\n")


def test_torque_answers_in_xml_and_ends_jobs_in_state_c() -> None:
    """Torque's qstat reads -x as "XML", where PBS Pro's reads it as "finished jobs too":
    read as text, every job was unlisted, and `job sync` closed the rows of queued jobs
    as forgotten (the autoscaler then submitted more). A completed Torque job is C."""
    assert schedq.parse_qstat(TORQUE_XML) == {
        "11.torque01.example.org": ("running", "R"),
        "12.torque01.example.org": ("waiting", "Q"),
        "13.torque01.example.org": ("ended", "C")}


def test_torque_jobs_are_found_through_qstat(tmp_path: object,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = TORQUE_XML.replace("\n", "\\n").replace("%", "%%")
    monkeypatch.setenv("PATH", _fake(tmp_path, "qstat", out, "", 0))
    assert schedq.phases("pbs", ["11.torque01", "12.torque01", "13.torque01"]) == {
        "11.torque01": ("running", "R"), "12.torque01": ("waiting", "Q"),
        "13.torque01": ("ended", "C")}


def test_qstat_xml_that_does_not_parse_is_an_error(tmp_path: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut or garbled XML says nothing of the jobs: an error, so that no row is closed."""
    monkeypatch.setenv("PATH", _fake(tmp_path, "qstat", TORQUE_XML[:120], "", 0))
    with pytest.raises(schedq.SchedulerQueryError, match="qstat's XML could not be read"):
        schedq.phases("pbs", ["11.torque01"])


def test_a_scheduler_that_cannot_be_asked_is_one_error(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(schedq.SchedulerQueryError, match="squeue is not on PATH"):
        schedq.phases("slurm", ["1"])
    with pytest.raises(schedq.SchedulerQueryError, match="cannot ask a cobalt scheduler"):
        schedq.phases("cobalt", ["1"])
    assert schedq.phases("slurm", []) == {}


def _fake(tmp_path: object, name: str, stdout: str, stderr: str, rc: int) -> str:
    from pathlib import Path

    bin_dir = Path(str(tmp_path)) / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho \"$@\" > {bin_dir}/{name}.argv\n"
                      f"printf '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {rc}\n")
    script.chmod(0o755)
    return str(bin_dir)


def test_slurm_forgets_ids_and_says_so(tmp_path: object,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue fails when it knows none of the ids: every id is unknown, not an error."""
    monkeypatch.setenv("PATH", _fake(tmp_path, "squeue", "",
                                     "slurm_load_jobs error: Invalid job id specified", 1))
    assert schedq.phases("slurm", ["7", "8"]) == {"7": ("unknown", "not listed"),
                                                  "8": ("unknown", "not listed")}
    monkeypatch.setenv("PATH", _fake(tmp_path, "squeue", "", "Unable to contact slurm "
                                     "controller", 1))
    with pytest.raises(schedq.SchedulerQueryError, match="squeue failed .*Unable to contact"):
        schedq.phases("slurm", ["7"])


def test_pbs_ids_match_by_their_sequence_number(tmp_path: object,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = "Job Id: 11.pbs01.example.org\\n    job_state = F\\n"
    monkeypatch.setenv("PATH", _fake(tmp_path, "qstat", out,
                                     "qstat: Unknown Job Id 12.pbs01", 153))
    assert schedq.phases("pbs", ["11.pbs01", "12.pbs01"]) == {
        "11.pbs01": ("ended", "F"), "12.pbs01": ("unknown", "not listed")}


def test_only_job_ids_reach_the_command_line(tmp_path: object,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An id that is not one of the scheduler's (a row's scheduler_job_id is the caller's
    own, but may come from the environment) is refused before any command runs; many ids
    go in chunks."""
    from pathlib import Path

    bindir = _fake(tmp_path, "squeue", "", "", 0)
    monkeypatch.setenv("PATH", bindir)
    for bad in ("-h", "--me", "12;", "12;a b", "1 2", ""):
        assert not schedq.is_job_id("slurm", bad)
        with pytest.raises(schedq.SchedulerQueryError, match="is not a slurm job id"):
            schedq.phases("slurm", ["1", bad])
    assert not (Path(bindir) / "squeue.argv").exists()
    ids = [str(i) for i in range(1, 1201)]
    assert set(schedq.phases("slurm", ids).values()) == {("unknown", "not listed")}
    last = (Path(bindir) / "squeue.argv").read_text().split()
    assert last[last.index("-j") + 1] == ",".join(ids[1000:])  # the third chunk of 500


def test_a_forgotten_id_does_not_hide_a_failure_beside_it(tmp_path: object,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """qstat asks about its ids one at a time: one it has forgotten says "Unknown Job Id",
    and a server lost midway (a failover, a restart) fails the rest. Their jobs are not
    forgotten: the answer is an error, so that no row is closed on it."""
    out = "Job Id: 11.pbs01\\n    job_state = R\\n"
    monkeypatch.setenv("PATH", _fake(
        tmp_path, "qstat", out, "qstat: Unknown Job Id 12.pbs01\nqstat: cannot connect "
        "to server pbs01 (errno=15010)", 153))
    with pytest.raises(schedq.SchedulerQueryError, match="cannot connect to server"):
        schedq.phases("pbs", ["11.pbs01", "12.pbs01", "13.pbs01"])


def test_the_users_squeue_settings_do_not_hide_jobs(tmp_path: object,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue ANDs -j with the filters of the caller's environment (SQUEUE_PARTITION,
    SQUEUE_ACCOUNT, SQUEUE_USERS, … from a .bashrc), and SLURM_CLUSTERS sends it to
    another cluster: a job they hide is not listed, which reads as forgotten, and its row
    would be closed while it waits. The ids are asked about without them."""
    from pathlib import Path

    bin_dir = Path(str(tmp_path)) / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text('#!/bin/sh\nif [ -n "$SLURM_CLUSTERS" ]; then echo "CLUSTER: $SLURM_'
                      'CLUSTERS"; exit 0; fi\nif [ -n "$SQUEUE_PARTITION$SQUEUE_ACCOUNT'
                      '$SQUEUE_USERS" ]; then exit 0; fi\nprintf "7|PENDING\\n8|RUNNING\\n"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    want = {"7": ("waiting", "PENDING"), "8": ("running", "RUNNING")}
    for name, value in (("SQUEUE_PARTITION", "debug"), ("SQUEUE_ACCOUNT", "other"),
                        ("SQUEUE_USERS", "someone"), ("SLURM_CLUSTERS", "elsewhere")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert schedq.phases("slurm", ["7", "8"]) == want, name


def test_cluster_identity_from_the_schedulers_own_words() -> None:
    """Slurm: ClusterName and the first controller (two sites may share a name); PBS:
    the server; anything odd or missing is unknown (the host rule then applies)."""
    from balsam_mpi.batch import clusterid

    config = ("Configuration data as of 2024-05-01T10:00:00\nClusterName             = "
              "polaris\nSlurmctldHost[0]        = ctl1(10.1.0.1)\nSlurmctldHost[1]        "
              "= ctl2\n")
    assert clusterid.parse_slurm_config(config) == "polaris@ctl1"
    assert clusterid.parse_slurm_config("ClusterName = polaris\n") is None
    assert clusterid.parse_slurm_config("ClusterName = a b\nSlurmctldHost[0] = c\n") is None
    assert clusterid.parse_slurm_config("") is None
    assert clusterid.parse_pbs_server("Server: pbs01.example.org\n    server_state = "
                                      "Active\n") == "pbs:pbs01.example.org"
    assert clusterid.parse_pbs_server("Server: $(rm)\n") is None
    assert clusterid.may_close("login1", "polaris@ctl1", "login2", "polaris@ctl1")
    assert not clusterid.may_close("login1", "polaris@ctl1", "login2", "theta@ctl9")
    assert not clusterid.may_close("login1", None, "login2", "polaris@ctl1")
    assert not clusterid.may_close("login1", "polaris@ctl1", "login2", None)
    assert clusterid.may_close("login1", None, "login1", None)


def test_a_job_is_found_by_its_whole_comment_and_its_owner() -> None:
    text = ("301|PENDING|alice|balsam:5:aa|x\n302_1|RUNNING|alice|balsam:6:bb\n"
            "303|PENDING|mallory|balsam:7:cc\n304|PENDING|alice|balsam:7:cc-not\n"
            "305|COMPLETED|alice|balsam:8:dd\nnoise\n")
    got = schedq.parse_comments(text, "alice", ["balsam:5:aa|x", "balsam:6:bb",
                                                "balsam:7:cc", "balsam:8:dd"])
    assert got == {"balsam:5:aa|x": ("301", "waiting", "PENDING"),
                   "balsam:6:bb": ("302", "running", "RUNNING"),
                   "balsam:8:dd": ("305", "ended", "COMPLETED")}
