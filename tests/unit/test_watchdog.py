"""The leader's watchdog (launcher/watchdog.py): cuts what runs under a frozen leader."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest

from balsam_mpi.launcher import watchdog
from balsam_mpi.launcher.watchdog import CHECK_S, watch_limit
from tests import nosys
from tests.procs import running

pytestmark = pytest.mark.timeout(60)


def until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def kids(pid: int) -> list[int]:
    return sorted(watchdog.children(pid))


Launch = Callable[[str], "subprocess.Popen[str]"]


def _leaders(refuse_pidfds: bool) -> Iterator[Launch]:
    """A stand-in leader: a Python process running ``body`` (on a system without pidfds,
    as a kernel before Linux 5.3: tests/nosys.py, inherited by its watchdog), killed
    with everything under it at the end."""
    started: list[subprocess.Popen[str]] = []

    def make(body: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                preexec_fn=(lambda: nosys.refuse("pidfd_open"))
                                if refuse_pidfds else None)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        for pid, _parent in list(watchdog.descendants(proc.pid, skip=-1)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.communicate()


@pytest.fixture
def leader() -> Iterator[Launch]:
    yield from _leaders(False)


@pytest.fixture
def leader_without_pidfds() -> Iterator[Launch]:
    if not nosys.supported():
        pytest.skip("seccomp numbers for x86-64/aarch64")
    yield from _leaders(True)


@pytest.mark.parametrize(("lease", "grace"), [(60.0, 10.0), (30.0, 1.0), (4.0, 0.5),
                                              (60.0, 29.75), (20.0, 0.0)])
def test_the_limit_follows_the_leaders_own_and_ends_before_the_lease(
        lease: float, grace: float) -> None:
    limit = watch_limit(lease, grace)
    assert limit >= lease / 2  # a live leader, which cuts at half its lease, goes first
    assert limit + grace + CHECK_S <= lease + 1e-9  # its tasks are dead before it ends


@pytest.mark.parametrize("launch", ["leader", "leader_without_pidfds"])
def test_a_leader_that_stops_beating_has_what_runs_under_it_cut(
        launch: str, request: pytest.FixtureRequest) -> None:
    """No heartbeat for the limit: the task (a child in its own session, as a task's
    trampoline is) gets SIGTERM; one that ignores it is killed after the grace. The
    leader itself is left alone, and learns when the watchdog cut. Without pidfds too
    (before, the watchdog's walk skipped every process it could not open one for: it
    cut nothing)."""
    leader: Launch = request.getfixturevalue(launch)
    proc = leader("""
        import subprocess, sys, time
        from balsam_mpi.launcher.watchdog import Watchdog
        dog = Watchdog(limit_s=1.0, grace_s=0.5, trampoline=None)
        stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"],
                                    start_new_session=True)
        plain = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(dog.proc.pid, stubborn.pid, plain.pid, flush=True)
        while dog.cut_at() == 0.0:
            time.sleep(0.05)
        first, again = dog.newly_cut(), dog.newly_cut()
        print("cut", first is not None and first >= 0.0, again, flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None
    dog, stubborn, plain = map(int, proc.stdout.readline().split())
    until("the plain task to die of SIGTERM", lambda: not running(plain))
    until("the task that ignores SIGTERM to be killed", lambda: not running(stubborn))
    assert proc.stdout.readline().split() == ["cut", "True", "None"]  # said once
    until("the watchdog to end after its cut", lambda: not running(dog))
    assert proc.poll() is None  # the leader lives on
    assert proc.stderr is not None
    assert "gave no sign of life" in proc.stderr.readline()


def test_nothing_is_cut_while_the_leader_beats(leader: Launch) -> None:
    proc = leader("""
        import subprocess, time
        from balsam_mpi.launcher.watchdog import Watchdog
        dog = Watchdog(limit_s=0.6, grace_s=0.1, trampoline=None)
        task = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(dog.proc.pid, task.pid, flush=True)
        for _ in range(60):  # 3 s, five times the limit
            dog.beat(time.monotonic())
            time.sleep(0.05)
        print(dog.cut_at(), task.poll(), flush=True)
        dog.close()
        print("closed", flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None
    dog, task = map(int, proc.stdout.readline().split())
    assert proc.stdout.readline().split() == ["0.0", "None"]
    assert proc.stdout.readline().strip() == "closed"
    assert not running(dog) and running(task)


def test_the_watchdog_dies_with_its_leader(leader: Launch) -> None:
    proc = leader("""
        import time
        from balsam_mpi.launcher.watchdog import Watchdog
        dog = Watchdog(limit_s=600.0, grace_s=1.0, trampoline=None)
        print(dog.proc.pid, flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None
    dog = int(proc.stdout.readline())
    until("the watchdog to be up", lambda: running(dog))
    proc.kill()
    proc.wait()
    until("the watchdog to follow its leader", lambda: not running(dog))


@pytest.mark.parametrize("pidfds", [True, False])
def test_what_runs_under_a_trampoline_is_the_trampolines_to_stop(
        leader: Launch, pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk signals a trampoline, never the task under it: the trampoline passes
    SIGTERM on and kills everything the task left on SIGHUP (node/runner.py). Here a
    shell stands in for the trampoline (its path is the one the watchdog is given).
    The same by pid and start time where pidfd_open is refused."""
    if not pidfds:
        def refused(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", refused)
    shell = os.path.realpath("/bin/sh")
    proc = leader("""
        import subprocess, sys, time
        tramp = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & wait"], start_new_session=True)
        zygote = subprocess.Popen([sys.executable, "-c",
                                   "import subprocess, time; subprocess.Popen(['sleep', '61']);"
                                   " time.sleep(60)"], start_new_session=True)
        print(tramp.pid, zygote.pid, flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None
    tramp, zygote = map(int, proc.stdout.readline().split())
    until("the processes to start", lambda: bool(kids(tramp)) and bool(kids(zygote)))
    [task] = kids(tramp)
    [interpreter] = kids(zygote)
    n = watchdog.cut(proc.pid, 0.5, shell)
    assert n == 3  # the trampoline, the zygote and the process under the zygote
    until("the trampoline and the zygote's line to end",
          lambda: not running(tramp) and not running(zygote) and not running(interpreter))
    assert running(task)  # not signalled by the watchdog: the trampoline's own to stop
    os.kill(task, signal.SIGKILL)


def test_a_watchdog_whose_leader_went_before_it_started_ends_at_once() -> None:
    """Its leader is named on its command line, never taken from its parent: a leader
    gone before the watchdog ran leaves it adopted by another process, which it must
    not take for the leader (and cut everything under)."""
    fd = os.memfd_create("test")
    os.ftruncate(fd, 16)
    try:
        # Its parent is this test, not the pid it is given (a pid that no longer runs).
        gone = subprocess.Popen(["true"])
        gone.wait()
        dog = subprocess.run([sys.executable, "-I", "-S", watchdog.__file__,
                              str(gone.pid), str(fd), "0.0", "0.0", "", "1", "0.0"],
                             pass_fds=(fd,),
                             timeout=20)
        assert dog.returncode == 0
        for pid in (0, 1):
            with pytest.raises(ValueError, match="not a rank"):
                watchdog.cut(pid, 0.0, "")
    finally:
        os.close(fd)


def test_children_are_found_without_the_kernels_list_too(leader: Launch) -> None:
    proc = leader("""
        import subprocess, time
        kids = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
        print(*(k.pid for k in kids), flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None
    expected = sorted(map(int, proc.stdout.readline().split()))
    assert kids(proc.pid) == expected
    assert sorted(watchdog._children_by_scan(proc.pid)) == expected


def test_a_watchdog_handed_another_page_watches_nothing_and_cuts_nothing(
        leader: Launch) -> None:
    """The rank passes its page to the watchdog by descriptor number. Should that number
    name another file by the time the watchdog starts (closed and reused by another
    thread of the rank), the watchdog read zeros — a proof of life from the clock's
    origin, hours old — and cut a live rank's tasks (seen twice under load, two launchers
    on one host: "no sign of life for 60556 s"). The page carries a random mark the
    watchdog is given too: another file's page lacks it, and the watchdog says so and
    ends without cutting (failed before: the task was cut)."""
    proc = leader("""
        import mmap, os, subprocess, time
        from balsam_mpi.launcher import watchdog as w
        real = mmap.mmap
        def mapped_then_reused(fd, size):
            page = real(fd, size)
            other = os.memfd_create("another")  # takes the page's number
            os.ftruncate(other, 4096)
            os.dup2(other, fd)
            os.close(other)
            return page
        w.mmap.mmap = mapped_then_reused
        dog = w.Watchdog(limit_s=0.5, grace_s=0.1, trampoline=None)
        w.mmap.mmap = real
        task = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(dog.proc.pid, task.pid, flush=True)
        dog.proc.wait()
        time.sleep(1.0)  # twice the limit: a cut would have come by now
        print(dog.proc.returncode, dog.cut_at(), task.poll(), flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None and proc.stderr is not None
    _dog, task = map(int, proc.stdout.readline().split())
    assert proc.stdout.readline().split() == ["3", "0.0", "None"]
    assert running(task)
    assert "not the page of rank pid" in proc.stderr.readline()


def test_a_page_zeroed_under_the_watchdog_is_not_read_as_a_silent_rank(
        leader: Launch) -> None:
    """The same if the rank's own page is zeroed while it is watched (its mark is read at
    every check): zeros are no proof of anything, so nothing is cut."""
    proc = leader("""
        import struct, subprocess, time
        from balsam_mpi.launcher.watchdog import Watchdog
        dog = Watchdog(limit_s=0.5, grace_s=0.1, trampoline=None)
        task = subprocess.Popen(["sleep", "60"], start_new_session=True)
        time.sleep(0.3)
        struct.pack_into("ddQ", dog.page, 0, 0.0, 0.0, 0)
        dog.proc.wait()
        time.sleep(1.0)
        print(dog.proc.returncode, task.poll(), flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == ["3", "None"]


def test_a_proof_of_life_older_than_the_first_is_no_proof(leader: Launch) -> None:
    """The mark was there and yet the proof of life read the clock's origin: a worker's
    watchdog cut a live rank's tasks during a run here ("no sign of life for 1072 s"
    on a host up 1,072 s, a run of 6,000 Python calls on 4 ranks). The cause was a
    proof read half written (the next test). Every proof a rank writes is later than
    the one it wrote before starting its watchdog, which now gets that first one too:
    one older still, read twice, is a page no longer to be trusted, said and not acted
    on (failed before: the task was cut)."""
    proc = leader("""
        import struct, subprocess, time
        from balsam_mpi.launcher.watchdog import Watchdog
        dog = Watchdog(limit_s=0.5, grace_s=0.1, trampoline=None)
        task = subprocess.Popen(["sleep", "60"], start_new_session=True)
        time.sleep(0.3)
        struct.pack_into("d", dog.page, 0, 0.0)  # the mark stays
        dog.proc.wait()
        time.sleep(1.0)
        print(dog.proc.returncode, dog.cut_at(), task.poll(), flush=True)
        time.sleep(60)
    """)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split() == ["3", "0.0", "None"]
    assert "older than its first" in proc.stderr.readline()


def test_a_proof_of_life_is_never_seen_half_written() -> None:
    """Why a live rank's watchdog read the clock's origin: ``struct.pack_into`` clears
    the bytes it packs before it writes them, so the watchdog, reading from another
    process, could find the proof of life at 0.0 in between (here, 111,803 reads of
    6,151,729 while a loop wrote) and cut a rank that had just proved itself alive. A
    proof is now written whole. A reader polling the page while the rank beats as fast
    as it can never sees one older than the first (failed before: thousands did)."""
    dog = watchdog.Watchdog(limit_s=60.0, grace_s=1.0, trampoline=None)
    try:
        first = struct.unpack_from("d", dog.page)[0]
        reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import mmap, struct, time
            page = mmap.mmap({dog.fd}, 24)
            older = reads = 0
            print("ready", flush=True)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                reads += 1
                if struct.unpack_from("ddQ", page)[0] < {first!r}:
                    older += 1
            print(older, reads, flush=True)
        """)], pass_fds=(dog.fd,), stdout=subprocess.PIPE, text=True)
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        while reader.poll() is None:
            for _ in range(1000):
                dog.beat(time.monotonic())
        older, reads = map(int, reader.stdout.read().split())
        assert reads > 10_000 and older == 0
    finally:
        dog.close()


def test_a_beat_after_the_close_is_ignored() -> None:
    """A crashed leader unwinds its node (and with it the watchdog) before it writes
    what it holds: a heartbeat answered meanwhile told the closed watchdog, raised
    TypeError, and the batch job was never closed as FAILED (seen in
    tests/e2e/test_launcher.py::test_a_crashing_worker_aborts_the_run_cleanly, 2 runs of
    6 on a loaded host). The rank's watchdog is gone: nothing to tell it."""
    dog = watchdog.Watchdog(limit_s=60.0, grace_s=1.0, trampoline=None)
    dog.close()
    dog.beat(time.monotonic())
    assert dog.cut_at() == 0.0 and dog.newly_cut() is None
