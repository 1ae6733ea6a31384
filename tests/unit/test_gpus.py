"""The per-node GPU pool and the visibility variables (pure: no GPU needed)."""

from __future__ import annotations

import pytest

from balsam_mpi.base.errors import BalsamError
from balsam_mpi.node.gpus import GpuPool, detect_vendor, inherited_ids, node_devices, visibility_env


def test_four_one_gpu_tasks_on_two_gpus() -> None:
    pool = GpuPool.from_count(2)
    first, second = pool.allocate(1), pool.allocate(1)
    assert first is not None and second is not None
    assert sorted(first + second) == ["0", "1"]  # distinct devices
    assert pool.allocate(1) is None  # the third waits …
    assert pool.allocate(1) is None  # … and so does the fourth
    pool.release(first)
    third = pool.allocate(1)
    assert third == first  # the device given back, and only that one
    assert pool.allocate(1) is None
    pool.release(second)
    fourth = pool.allocate(1)
    assert fourth == second
    assert {third[0], fourth[0]} == {"0", "1"}


def test_two_gpu_task_takes_both_and_waits_for_both() -> None:
    pool = GpuPool.from_count(2)
    assert pool.allocate(2) == ["0", "1"]
    assert pool.allocate(1) is None
    pool.release(["0", "1"])
    one = pool.allocate(1)
    assert one == ["0"]
    assert pool.allocate(2) is None  # one device is not enough for it
    pool.release(one)
    assert pool.allocate(2) == ["0", "1"]


def test_never_two_holders_over_many_rounds() -> None:
    pool = GpuPool(["a", "b", "c", "d"])
    held: dict[int, list[str]] = {}
    for task in range(40):  # take and give back in a shifting pattern
        want = 1 + task % 3
        got = pool.allocate(want)
        if got is None:
            oldest = min(held)
            pool.release(held.pop(oldest))
            got = pool.allocate(want)
        if got is not None:
            held[task] = got
        taken = [d for ids in held.values() for d in ids]
        assert len(taken) == len(set(taken))
        assert sorted(taken + pool.free_ids()) == ["a", "b", "c", "d"]


def test_zero_gpus_and_impossible_requests() -> None:
    pool = GpuPool.from_count(2)
    assert pool.allocate(0) == []
    with pytest.raises(BalsamError, match="a node has 2"):
        pool.allocate(3)
    with pytest.raises(BalsamError):
        pool.allocate(-1)


def test_release_only_what_is_held() -> None:
    pool = GpuPool.from_count(2)
    ids = pool.allocate(1)
    assert ids == ["0"]
    with pytest.raises(BalsamError, match="released once"):
        pool.release(["1"])  # free already
    pool.release(ids)
    with pytest.raises(BalsamError, match="released once"):
        pool.release(ids)  # twice
    assert pool.free == 2


def test_pool_refuses_repeated_or_bad_ids() -> None:
    with pytest.raises(BalsamError, match="repeat"):
        GpuPool(["0", "0"])
    with pytest.raises(BalsamError):
        GpuPool(["0,1"])
    with pytest.raises(BalsamError):
        GpuPool.from_count(-1)


def test_node_devices() -> None:
    assert node_devices(4) == ["0", "1", "2", "3"]
    assert node_devices(0) == []
    assert node_devices(devices="2, 3") == ["2", "3"]
    assert node_devices(2, devices=["0.0", "0.1"]) == ["0.0", "0.1"]  # Intel tiles
    # The launcher was given devices 4-7 by the scheduler: tasks get those, not 0-3.
    assert node_devices(2, inherited="4,5,6,7") == ["4", "5"]
    assert node_devices(0, inherited="4,5") == []
    with pytest.raises(BalsamError, match="one id per GPU"):
        node_devices(4, devices="0,1")
    with pytest.raises(BalsamError, match="sees only 2"):
        node_devices(4, inherited="0,1")


def test_visibility_env_per_vendor() -> None:
    assert visibility_env("nvidia", ["1"]) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert visibility_env("amd", ["0", "1"]) == {"ROCR_VISIBLE_DEVICES": "0,1"}
    assert visibility_env("intel", ["0.0", "0.1"]) == {"ZE_AFFINITY_MASK": "0.0,0.1"}
    assert visibility_env(None, ["2"]) == {"CUDA_VISIBLE_DEVICES": "2",
                                           "ROCR_VISIBLE_DEVICES": "2",
                                           "ZE_AFFINITY_MASK": "2"}
    assert visibility_env("nvidia", []) == {}
    with pytest.raises(BalsamError, match="unknown"):
        visibility_env("matrox", ["0"])


def test_detect_vendor_order() -> None:
    none_exist: set[str] = set()
    assert detect_vendor({}, option="AMD", exists=none_exist.__contains__) == "amd"
    assert detect_vendor({"BALSAM_GPU_VENDOR": "intel", "CUDA_VISIBLE_DEVICES": "0"},
                         exists=none_exist.__contains__) == "intel"
    assert detect_vendor({"CUDA_VISIBLE_DEVICES": "0,1"},
                         exists=none_exist.__contains__) == "nvidia"
    assert detect_vendor({"HIP_VISIBLE_DEVICES": "0"}, exists=none_exist.__contains__) == "amd"
    assert detect_vendor({}, exists={"/dev/kfd"}.__contains__) == "amd"
    assert detect_vendor({}, exists={"/dev/nvidiactl"}.__contains__) == "nvidia"
    assert detect_vendor({}, exists=none_exist.__contains__) is None
    # Two vendors' variables and no device file: cannot tell, so None (set all three).
    assert detect_vendor({"CUDA_VISIBLE_DEVICES": "0", "ZE_AFFINITY_MASK": "0"},
                         exists=none_exist.__contains__) is None
    with pytest.raises(BalsamError, match="unknown"):
        detect_vendor({"BALSAM_GPU_VENDOR": "matrox"})


def test_inherited_ids() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert inherited_ids("nvidia", env) == "4,5"
    assert inherited_ids("amd", env) is None
    assert inherited_ids(None, env) is None
