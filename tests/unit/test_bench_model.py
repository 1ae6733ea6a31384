"""The scale model's mechanics on cases small enough to work out by hand (no timings)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from benchmarks.calibrate import fit_line
from benchmarks.model import Case, Costs, Model, Policy, interpolate, simulate


def test_one_slot_three_tasks_by_hand() -> None:
    # One node with one slot, 1 s tasks, a spawn costs 0.1 s, nothing else costs anything.
    # A packing of 1 leaves no room for a queued task (margin 0.5 < one task's 1.0), so
    # each task starts after the previous one ends and its report comes back:
    # starts 0.1, 1.2, 2.3; the last ends at 3.3; the end flush waits its interval (0.1 s),
    # then the job closes at 3.4. Utilization = 3 busy s / 3.4 s.
    r = simulate(Case(1, 1, 1, 1.0, 3), Costs(spawn_s=0.1))
    assert r["done"] == 3
    assert r["first_task_s"] == pytest.approx(0.1)
    assert r["wall_s"] == pytest.approx(3.4)
    assert r["tail_idle_s"] == pytest.approx(0.1)
    assert r["utilization"] == pytest.approx(3 / 3.4)
    assert r["throughput_per_s"] == pytest.approx(3 / 3.2)


def test_free_pipeline_is_fully_busy_but_for_start_and_end() -> None:
    # Costs all zero: 8 tasks on 4 slots run in exactly 2 waves; only the start-up, the
    # flush interval and the close count against utilization.
    r = simulate(Case(1, 1, 4, 1.0, 8), Costs(startup_s=0.5, close_s=0.4))
    assert r["wall_s"] == pytest.approx(0.5 + 2.0 + 0.1 + 0.4)
    assert r["utilization"] == pytest.approx(8 / (4 * 3.0))


def test_margin_queues_work_so_refills_need_no_round_trip() -> None:
    # Packing 2 plus half a node of margin: a node holds 3 tasks (2 running, 1 queued).
    # Messages take 0.25 s each way. The first ASSIGN (3 tasks) arrives at 0.25: two
    # start. At 1.25 they end; the queued one starts at once, no round trip. The 4th task
    # goes out when the leader hears of those ends (1.5) and starts at 1.75, ends at 2.75;
    # the leader hears of it at 3.0, flushes after its 0.1 s interval, closes at 3.1.
    model = Model(Case(1, 1, 2, 1.0, 4), Costs(msg_latency_s=0.25), trace=True)
    r = model.run().summary()
    assert model.starts == pytest.approx([0.25, 0.25, 1.25, 1.75])
    assert r["wall_s"] == pytest.approx(3.1)
    assert r["utilization"] == pytest.approx(4 / (2 * 3.1))


def test_leader_cpu_bounds_throughput() -> None:
    # Instant tasks, a leader that needs 10 ms per claimed task: about 100 tasks/s.
    r = simulate(Case(1, 4, 8, 0.0, 4000), Costs(leader_task_s=0.01))
    assert 90.0 < r["throughput_per_s"] < 110.0
    assert r["leader_cpu_busy"] > 0.8


def test_database_thread_bounds_throughput() -> None:
    # Claims cost 1 ms per row on the leader's one database thread: ≤ 1000 tasks/s.
    r = simulate(Case(1, 4, 16, 0.0, 4000), Costs(claim_row_s=1e-3))
    # (the span starts after the first claim: a little over 1000/s)
    assert 950.0 < r["throughput_per_s"] < 1050.0
    assert r["db_thread_busy"] > 0.8


def test_every_task_runs_once_across_launchers() -> None:
    r = simulate(Case(5, 3, 4, 0.5, 997), Costs(spawn_s=1e-3, claim_fixed_s=1e-3))
    assert r["done"] == 997


def test_representative_nodes_match_the_full_simulation() -> None:
    costs = Costs(spawn_s=1e-3, leader_task_s=2e-5, leader_msg_s=3e-5, claim_fixed_s=1e-3,
                  claim_row_s=2e-5, flush_fixed_s=1e-3, flush_end_row_s=2e-5,
                  msg_latency_s=1e-4)
    full = simulate(Case(1, 32, 16, 1.0, 32 * 16 * 5), costs)
    reps = simulate(Case(1, 32, 16, 1.0, 32 * 16 * 5, reps=4), costs)
    assert reps["done"] == full["done"]
    assert reps["utilization"] == pytest.approx(full["utilization"], rel=0.01)
    assert reps["events"] < full["events"] / 4


def test_periodic_reports_stretch_the_leader() -> None:
    base = Model(Case(1, 100, 1, 1.0, 100), Costs(leader_msg_s=1e-3))
    assert base.stretch == pytest.approx(1 / (1 - 0.1))
    assert Model(Case(1, 100, 1, 1.0, 100), Costs(), Policy()).stretch == 1.0


def test_fit_line() -> None:
    fit = fit_line([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
    assert fit["fixed_s"] == pytest.approx(1.0)
    assert fit["per_row_s"] == pytest.approx(2.0)
    assert not math.isnan(fit_line([2.0, 2.0], [1.0, 1.0])["fixed_s"])


def test_a_shared_host_bounds_the_spawns_of_all_nodes_together() -> None:
    # Two nodes, one task each, instant otherwise: on their own cores both start at 0.1;
    # on one shared host that starts a task every 0.25 s, the two share it and both
    # starts are done by 0.5 (two starts' worth of the host).
    own = Model(Case(1, 2, 1, 1.0, 2), Costs(spawn_s=0.1), trace=True)
    own.run()
    assert own.starts == pytest.approx([0.1, 0.1])
    shared = Model(Case(1, 2, 1, 1.0, 2), Costs(spawn_s=0.1, host_spawn_s=0.25), trace=True)
    shared.run()
    assert max(shared.starts or [0.0]) == pytest.approx(0.5)


def test_a_shared_host_is_not_held_by_one_nodes_own_pace() -> None:
    # Four nodes of 8 slots, 32 tasks of 10 s; each node's worker starts one every 0.01 s,
    # the host can start one every 0.001 s: the nodes are the bound, each at its own
    # pace in parallel (the first wave done by 8 × 0.01 s), not one after another.
    sim = Model(Case(1, 4, 8, 10.0, 32), Costs(spawn_s=0.01, host_spawn_s=0.001),
                trace=True)
    sim.run()
    assert max(sim.starts or [0.0]) == pytest.approx(0.08)
    # The other way round the host is the bound: 32 starts at 0.01 s each.
    slow = Model(Case(1, 4, 8, 10.0, 32), Costs(spawn_s=0.001, host_spawn_s=0.01),
                 trace=True)
    slow.run()
    assert max(slow.starts or [0.0]) == pytest.approx(0.32, rel=0.05)


def test_jitter_keeps_durations_within_bounds_and_runs_repeat() -> None:
    case = Case(1, 2, 4, 1.0, 40, jitter=0.2)
    a, b = simulate(case, Costs()), simulate(case, Costs())
    assert a == b
    # busy time is the sum of durations: 40 tasks of 0.8…1.2 s
    busy = a["utilization"] * 8 * a["wall_s"]
    assert 40 * 0.8 < busy < 40 * 1.2


def test_interpolated_database_costs() -> None:
    table = ((16.0, 0.01), (64.0, 0.02), (256.0, 0.06))
    assert interpolate(table, 1) == pytest.approx(0.01)
    assert interpolate(table, 40) == pytest.approx(0.015)
    assert interpolate(table, 448) == pytest.approx(0.10)  # last slope: 0.04 per 192
    c = Costs(start_table=table, end_table=table)
    assert c.flush(64, 0) == pytest.approx(0.02)
    assert c.flush(64, 64) == pytest.approx(0.03)  # one round trip (0.01) counted once
    both = Costs(start_table=table, end_table=table,
                 combined_table=((16.0, 0.005), (64.0, 0.01), (256.0, 0.03)))
    assert both.flush(64, 64, paired=64) == pytest.approx(0.01)  # one write each
    # 32 written at once, 32 starts and 32 ends apart: three parts, one round trip
    # (the combined table's first point, the smallest) counted once.
    parts = interpolate(both.combined_table, 32) + 2 * interpolate(table, 32)
    assert both.flush(64, 64, paired=32) == pytest.approx(parts - 2 * 0.005)


def test_without_the_recall_a_node_queues_a_third_wave_the_recall_moves_it() -> None:
    # 4 nodes × 16, 2 waves of 10 s tasks: the first node to report after the first wave
    # takes its free slots plus a margin, so without the recall its queue runs as a third
    # wave while others idle (as measured: 0.66); with it, two waves.
    case, costs = Case(1, 4, 16, 10.0, 128), Costs(msg_latency_s=0.001, spawn_s=0.002)
    before = simulate(case, costs, Policy(recall=False))
    after = simulate(case, costs, Policy())
    assert 30.0 < before["wall_s"] < 31.0
    assert 20.0 < after["wall_s"] < 21.0
    assert after["done"] == before["done"] == 128


def test_launchers_hand_back_queued_work_so_none_runs_an_extra_wave() -> None:
    # 3 launchers × 4 nodes × 8 slots, 3 waves of 600 s tasks in one table. Each claims
    # its free slots plus a margin, so the first claims take more than a third each and
    # the last one short: without handing back, the launchers holding extra queued
    # tasks run a 4th wave while the last one's slots idle; with it, 3 waves.
    case = Case(3, 4, 8, 600.0, 3 * 4 * 8 * 3)
    costs = Costs(msg_latency_s=1e-4, claim_fixed_s=2e-3, claim_row_s=2e-5,
                  flush_fixed_s=2e-3, spawn_s=1e-3)
    before = simulate(case, costs, Policy(give_back=False))
    after = simulate(case, costs, Policy())
    assert before["wall_s"] > 4 * 600.0 and before["utilization"] < 0.95
    assert after["wall_s"] < 3 * 600.0 + 5.0 and after["utilization"] > 0.99


def test_claims_on_their_own_connection_run_beside_a_flush() -> None:
    # A claim and a flush of 1 s each, sent at once: side by side with the claims'
    # connection (both done at 1 s), one after the other without it (the second at 2 s).
    for own, second in ((True, 1.0), (False, 2.0)):
        m = Model(Case(1, 1, 1, 1.0, 1), Costs(), Policy(claim_connection=own))
        ld = m.leaders[0]
        m._db(ld, 0, 1.0, "flushed")
        m._db(ld, 0, 1.0, "claimed", 1, 1.0, claim=True)
        assert sorted(t for t, *_ in m.heap) == pytest.approx([1.0, second])


def test_a_database_of_few_cores_bounds_every_launcher_together() -> None:
    # Claims cost 1 ms per row. Unbounded (the default), five launchers claim side by
    # side: about 5,000 tasks/s. On one database core, their calls take turns: ≤ 1,000/s
    # for all five together, and the core is what holds them back.
    case = Case(5, 4, 16, 0.0, 8000)
    free = simulate(case, Costs(claim_row_s=1e-3))
    one_core = simulate(replace(case, db_cores=1), Costs(claim_row_s=1e-3))
    assert free["throughput_per_s"] > 4000.0
    assert 900.0 < one_core["throughput_per_s"] < 1050.0
    assert one_core["db_cores_busy"] > 0.8
    # Two cores: twice that.
    two = simulate(replace(case, db_cores=2), Costs(claim_row_s=1e-3))
    assert 1800.0 < two["throughput_per_s"] < 2100.0


def test_a_database_core_serves_calls_in_the_order_they_are_sent() -> None:
    # Two leaders send a 1 s call each at once to a database of one core: the second is
    # done at 2 s, not 1 s; its own thread was free all along.
    m = Model(Case(2, 1, 1, 1.0, 2, db_cores=1), Costs())
    m._db(m.leaders[0], 0, 1.0, "flushed")
    m._db(m.leaders[1], 1, 1.0, "flushed")
    assert sorted(t for t, *_ in m.heap) == pytest.approx([1.0, 2.0])


def test_each_what_if_changes_only_its_own_setting() -> None:
    from benchmarks.model_whatifs import SWEEPS, case_and_policy

    by_setting = {s.setting: s for s in SWEEPS}
    case, policy = case_and_policy(by_setting["claim_limit"], 256, 10.0, 8)
    assert (case.launchers, case.nodes, case.db_cores) == (5, 802, 0)
    assert policy == replace(Policy(), claim_limit=256)
    case, policy = case_and_policy(by_setting["flush_interval_s"], 2.0, 10.0, 8)
    assert policy == replace(Policy(), flush_interval_s=2.0)
    per_db = [s for s in SWEEPS if s.setting == "launchers"]
    assert {s.db_cores for s in per_db} == {2, 8, 0}
    for sweep in per_db:
        case, policy = case_and_policy(sweep, 20, 60.0, 8)
        assert (case.launchers, case.nodes * case.launchers) == (20, 10_000)
        assert case.db_cores == sweep.db_cores and policy == Policy()


def test_a_database_core_is_left_free_for_calls_that_can_start_sooner() -> None:
    # Core 0 busy until 4. A call that cannot start before 5 (its thread is busy) takes
    # core 0 (freed last), so a call ready at 1 starts at once on core 1, not at 4.
    from benchmarks.model_dbhost import DbHost

    host = DbHost(2)
    assert host.reserve(0.0, 4.0) == 0.0
    assert host.reserve(5.0, 1.0) == 5.0
    assert host.reserve(1.0, 2.0) == 1.0
    assert host.share(8.0) == pytest.approx(7.0 / 16.0)
    assert DbHost(0).reserve(3.0, 1.0) == 3.0 and DbHost(0).share(8.0) is None


def test_a_flush_pairs_the_starts_whose_end_it_also_holds() -> None:
    from benchmarks.model import paired_share

    assert paired_share(0.2, 0.05) == pytest.approx(0.75)  # started in its first 0.15 s
    assert paired_share(0.1, 0.1) == 0.0 and paired_share(0.1, 1.0) == 0.0
    assert paired_share(0.0, 0.0) == 1.0  # the null runner: ends with their starts


def test_claims_ask_for_some_margin_ahead_and_refill_from_the_pool() -> None:
    # As claims.AHEAD: 4 nodes × 16 slots of 0.1 s tasks, each with a node's margin. A
    # claim for only what the nodes could take brought a few tasks each; asking for a
    # quarter of the margins more, held in the pool, makes fewer claims at the same
    # utilization.
    case = Case(1, 4, 16, 0.1, 64 * 20)
    costs = Costs(spawn_s=1e-4, claim_fixed_s=1e-3, msg_latency_s=1e-4)
    runs = {a: Model(case, costs, Policy(claim_ahead=a)).run() for a in (0.0, 0.25)}
    claims = {a: r.per_launcher[0]["claims"] for a, r in runs.items()}
    util = {a: r.summary()["utilization"] for a, r in runs.items()}
    assert claims[0.25] <= 0.75 * claims[0.0], claims
    assert util[0.25] >= util[0.0] - 0.005, util
