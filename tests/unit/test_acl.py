"""POSIX ACL entries that keep a group member (a viewer, a dropped user) from writing the
project's shared directories, checked with a real process of another uid (as root)."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from balsam_mpi.base import acl, safefs
from balsam_mpi.base.errors import ProjectError
from balsam_mpi.dbctl import viewers

GID = 54321  # the project's group in these tests (need not exist in /etc/group)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches to another uid (root)")


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def as_member_of_group(uid: int, action: Callable[[], None]) -> int:
    """Run ``action`` in a child with ``uid`` and the project's group; 0 if it succeeded,
    else the errno it failed with."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgroups([GID])
            os.setgid(GID)
            os.setuid(uid)
            action()
        except OSError as exc:
            code = exc.errno or 1
        except BaseException:
            code = 255
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture()
def project() -> Iterator[Path]:
    """A project tree under /tmp (pytest's own directory is 0700: others cannot reach)."""
    base = Path(tempfile.mkdtemp(prefix="bacl-", dir="/tmp"))
    os.chmod(base, 0o755)
    if not acl.supported(str(base)):
        shutil.rmtree(base)
        pytest.skip("no POSIX ACLs on this filesystem")
    root = base / "p"
    root.mkdir()
    os.chown(root, -1, GID)
    os.chmod(root, 0o3750)
    for name, mode in (("data", 0o2770), ("log", 0o3770), ("qsubmit", 0o3770),
                       ("access", 0o3770)):
        (root / name).mkdir()
        os.chown(root / name, -1, GID)
        os.chmod(root / name, mode)
        if name in acl.SHARED:
            assert acl.init_defaults(root / name)
    yield root
    shutil.rmtree(base)


def test_blobs_round_trip_through_the_kernel(tmp_path: Path) -> None:
    if not acl.supported(str(tmp_path)):
        pytest.skip("no POSIX ACLs on this filesystem")
    entries = acl.with_barred(acl.from_mode(0o770), bar=[4242])
    os.setxattr(tmp_path, acl.ACCESS, acl.encode(entries))
    assert acl.read(str(tmp_path)) == entries
    assert acl.barred(entries) == {4242}
    mask = [e for e in entries if e.tag == acl.MASK]
    assert mask == [acl.Entry(acl.MASK, acl.UNDEFINED, 7)]  # group rwx is not cut
    back = acl.with_barred(entries, unbar=[4242])
    assert back == sorted(acl.from_mode(0o770)) and acl.barred(back) == frozenset()
    assert acl.with_barred(entries, bar=[4242]) == entries  # idempotent


@needs_root
def test_a_barred_member_of_the_group_reads_but_cannot_write(project: Path) -> None:
    uid = _nobody()
    (project / "data" / "wf").mkdir()  # exists before the entry: fixed by the walk
    (project / "data" / "wf" / "t.out").write_text("output\n")
    assert as_member_of_group(uid, lambda: os.mkdir(project / "data" / "x")) == 0
    out = acl.apply(project, bar=[uid], access=([uid], ()))
    assert out.changed >= 5 and out.foreign == 0
    (project / "data" / "later").mkdir(mode=0o2770)  # made after: inherits the entry
    for path in ("data/y", "data/wf/y", "data/later/y", "log/y", "qsubmit/y", "access/y"):
        assert as_member_of_group(uid, lambda p=path: os.mkdir(project / p)) == errno.EACCES
    assert as_member_of_group(
        uid, lambda: os.open(project / "data" / "wf" / "t.out", os.O_WRONLY)) == errno.EACCES
    assert as_member_of_group(uid, lambda: os.listdir(project / "data" / "wf")) == 0
    # The runner's explicit chmod 2770 moves only the mask: the entry still holds.
    os.chmod(project / "data" / "later", 0o2770)
    assert as_member_of_group(uid, lambda: os.mkdir(project / "data/later/z")) == errno.EACCES
    # Unbarred (added back as a member): writes again, new directories too.
    acl.apply(project, unbar=[uid], access=((), [uid]))
    assert as_member_of_group(uid, lambda: os.mkdir(project / "data" / "wf" / "z")) == 0
    assert acl.barred_in(project) == frozenset()


@needs_root
def test_the_launcher_refuses_what_a_barred_user_made_and_heals_its_own(project: Path
                                                                        ) -> None:
    uid = _nobody()
    made_by_them = project / "data" / "theirs"
    made_by_them.mkdir()
    os.chown(made_by_them, uid, GID)
    mine = project / "data" / "mine"
    mine.mkdir()
    data_fd = os.open(project / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        acl.set_barred(data_fd, bar=[uid])  # data/ only: mine/ has no entry yet
    finally:
        os.close(data_fd)
    root = safefs.Root.open(str(project / "data"))
    try:
        assert uid in root.trust.barred
        with pytest.raises(safefs.UnsafePath, match="data/theirs: it is owned by"):
            root.open_dir(["theirs", "0"])
        os.close(root.open_dir(["mine", "0"]))
    finally:
        root.close()
    assert uid in acl.barred(acl.read(str(mine), acl.DEFAULT))
    assert uid in acl.barred(acl.read(str(mine)))
    assert stat.S_IMODE(mine.stat().st_mode) == 0o2770
    assert as_member_of_group(uid, lambda: os.mkdir(mine / "z")) == errno.EACCES


def test_no_acls_means_read_only_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(viewers, "supported", lambda _target: False)
    with pytest.raises(ProjectError, match="no POSIX ACLs") as info:
        viewers.require_support(tmp_path, "viewer")
    assert "\n" not in str(info.value)
