"""The fair division of runnable rows among launchers with different filters
(launcher/division.py): every row to a launcher that may take it, the largest load per
node as small as it can be, the same answer for every leader."""

from __future__ import annotations

import random

import pytest

from balsam_mpi.launcher.division import (
    Taker,
    divide,
    kind,
    kind_parts,
    sig_filters,
    signature,
    workflow_set,
)

# The `concurrent` benchmark's launchers: wf_a only, wf_b only, wf_a and wf_c, two open.
BENCH = [Taker(1, frozenset({"a"}), 1.0), Taker(2, frozenset({"b"}), 1.0),
         Taker(3, frozenset({"a", "c"}), 1.0), Taker(4, None, 1.0), Taker(5, None, 1.0)]


def loads(shares: dict[int, dict[str, float]], takers: list[Taker]) -> dict[int, float]:
    return {t.job_id: (t.held + sum(shares[t.job_id].values())) / t.weight for t in takers}


def test_the_benchmarks_launchers_get_equal_shares() -> None:
    shares = divide({"a": 96, "b": 64, "c": 64, "d": 96}, BENCH)
    assert loads(shares, BENCH) == pytest.approx({j: 64.0 for j in range(1, 6)})
    assert shares[1] == pytest.approx({"a": 64.0})
    assert shares[3] == pytest.approx({"a": 32.0, "c": 32.0})
    assert shares[4].get("d", 0) + shares[5].get("d", 0) == pytest.approx(96.0)


def test_every_row_goes_to_a_launcher_that_may_take_it() -> None:
    rng = random.Random(7)
    for _ in range(50):
        names = [f"w{i}" for i in range(rng.randint(1, 12))]
        counts = {w: rng.randint(0, 300) for w in names}
        takers = [Taker(j, None if rng.random() < 0.3 else
                        frozenset(rng.sample(names, rng.randint(1, len(names)))),
                        float(rng.randint(1, 4)), float(rng.randint(0, 50)))
                  for j in range(1, rng.randint(2, 7))]
        shares = divide(counts, takers)
        for t in takers:
            assert all(t.takes(w) for w in shares[t.job_id])
        for w, n in counts.items():
            if any(t.takes(w) for t in takers):
                assert sum(s.get(w, 0.0) for s in shares.values()) == pytest.approx(n, abs=1e-9)


def test_no_division_has_a_smaller_largest_load() -> None:
    """Against brute force over whole rows on small cases: the bisection's load is the
    optimum, in whole rows."""
    rng = random.Random(11)
    for _ in range(30):
        counts = {"a": rng.randint(0, 6), "b": rng.randint(0, 6)}
        takers = [Taker(1, frozenset({"a"}), 1.0, float(rng.randint(0, 3))),
                  Taker(2, frozenset({"a", "b"}), 1.0, float(rng.randint(0, 3))),
                  Taker(3, None, 2.0, float(rng.randint(0, 3)))]
        shares = divide(counts, takers)
        assert all(rows == int(rows) for s in shares.values() for rows in s.values())
        got = max(loads(shares, takers).values())
        best = min(
            max(takers[0].held + a1,
                takers[1].held + a2 + b2,
                (takers[2].held + counts["a"] - a1 - a2 + counts["b"] - b2) / 2.0)
            for a1 in range(counts["a"] + 1) for a2 in range(counts["a"] - a1 + 1)
            for b2 in range(counts["b"] + 1))
        assert got == pytest.approx(best)


def test_what_a_launcher_holds_counts_toward_its_load() -> None:
    takers = [Taker(1, None, 1.0, held=30.0), Taker(2, None, 1.0)]
    shares = divide({"a": 10}, takers)
    assert shares[1] == {} and shares[2] == pytest.approx({"a": 10.0})


def test_weights_are_nodes() -> None:
    takers = [Taker(1, None, 1.0), Taker(2, None, 3.0)]
    assert loads(divide({"a": 40}, takers), takers) == pytest.approx({1: 10.0, 2: 10.0})


def test_workflows_nobody_takes_are_left_out_and_nothing_is_no_share() -> None:
    takers = [Taker(1, frozenset({"a"}), 1.0)]
    assert divide({"a": 4, "z": 9}, takers) == {1: pytest.approx({"a": 4.0})}
    assert divide({}, takers) == {1: {}}
    assert divide({"z": 3}, takers) == {1: {}}


def test_every_leader_gets_the_same_answer() -> None:
    counts = {"a": 96, "b": 64, "c": 64, "d": 96}
    first = divide(counts, BENCH)
    assert all(divide(dict(reversed(counts.items())), list(reversed(BENCH))) == first
               for _ in range(3))


def test_an_empty_filter_takes_every_workflow() -> None:
    assert workflow_set([]) is None and workflow_set(["a"]) == frozenset({"a"})


def test_a_division_past_its_budget_gives_no_shares() -> None:
    counts = {f"w{i}": 1000 + i for i in range(64)}
    takers = [Taker(j, frozenset(f"w{i}" for i in range(j % 7, 64, 3)), 1.0 + j % 3)
              for j in range(1, 65)]
    assert divide(counts, takers, budget_s=0.0) == {t.job_id: {} for t in takers}
    assert any(divide(counts, takers, budget_s=10.0).values())  # with time, shares


def test_rows_counted_per_owner_go_to_launchers_whose_owner_filter_takes_them() -> None:
    """Members each running their own launcher beside an open one: 48 rows, 16 each."""
    takers = [Taker(1, None, 1.0, owners=frozenset({"alice"})),
              Taker(2, None, 1.0, owners=frozenset({"bob"})), Taker(3, None, 1.0)]
    counts = {kind("w", "alice"): 24, kind("w", "bob"): 24}
    shares = divide(counts, takers)
    assert loads(shares, takers) == pytest.approx({1: 16.0, 2: 16.0, 3: 16.0})
    assert set(shares[1]) == {kind("w", "alice")} and set(shares[2]) == {kind("w", "bob")}


def test_a_kind_is_taken_only_by_filters_that_take_both_its_parts() -> None:
    alice_w = Taker(1, frozenset({"w"}), 1.0, owners=frozenset({"alice"}))
    assert alice_w.takes(kind("w", "alice"))
    assert not alice_w.takes(kind("w", "bob")) and not alice_w.takes(kind("v", "alice"))
    assert not alice_w.takes("w")  # a whole workflow: others' rows too
    assert Taker(2, None, 1.0).takes(kind("v", "bob")) and Taker(2, None, 1.0).takes("v")
    assert kind_parts(kind("w", "alice")) == ("w", "alice", None)
    assert kind_parts("w") == ("w", None, None)
    assert kind_parts(kind("w", None, "01")) == ("w", None, "01")
    assert kind_parts(kind("w\x01x", "bob", "10")) == ("w\x01x", "bob", "10")


def test_a_kind_by_tags_is_taken_by_launchers_whose_tag_filter_it_matches() -> None:
    site_a = Taker(1, None, 1.0, tag_bit=0)
    site_b = Taker(2, None, 1.0, tag_bit=1)
    open_one = Taker(3, None, 1.0)
    assert site_a.takes(kind("w", None, "10")) and site_a.takes(kind("w", None, "11"))
    assert not site_a.takes(kind("w", None, "01")) and not site_a.takes("w")
    assert site_b.takes(kind("w", None, "01")) and not site_b.takes(kind("w", "x", "10"))
    assert open_one.takes(kind("w", None, "00")) and open_one.takes(kind("w", None, "10"))
    # 24 rows of each site and 12 untagged, three launchers: 20 each, each site's own.
    counts = {kind("w", None, "10"): 24, kind("w", None, "01"): 24,
              kind("w", None, "00"): 12}
    shares = divide(counts, [site_a, site_b, open_one])
    assert loads(shares, [site_a, site_b, open_one]) == pytest.approx(
        {1: 20.0, 2: 20.0, 3: 20.0})
    assert set(shares[1]) == {kind("w", None, "10")}
    assert set(shares[2]) == {kind("w", None, "01")}


def test_the_claim_filters_of_a_signature() -> None:
    a, b, gpu = (("site", "a"),), (("site", "b"),), (("gpu", "1"),)
    filters = (gpu, a, b)
    assert signature({"site": "a", "gpu": "1", "x": "y"}, filters) == "110"
    assert signature({}, filters) == "000"
    assert sig_filters("010", filters) == ((("site", "a"),), (gpu, b))
    assert sig_filters("110", filters, own=(("site", "a"),)) == (
        (("gpu", "1"), ("site", "a")), (b,))
    assert sig_filters("000", filters) == ((), filters)
    assert sig_filters("011", filters) is None  # site a and site b at once: no such row
