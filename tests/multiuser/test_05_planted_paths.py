"""Issue 14 cases 1-3 and the qsubmit half of 6, issue 15 case 9, with the real users: what
a member or a viewer plants in the project never reaches beyond their role, and nothing a
task forks outlives it. Each attack fails with one clear line (the task's recorded
output tail, or a command's stderr) and leaves the owner's files as they were.

The owner's launcher runs a single rank without mpiexec (``python -m balsam_mpi``), as
the owner, over a workflow of tasks into whose directories a member planted symlinks,
FIFOs, sockets and hard links before the launcher came; a viewer's attempts fail earlier,
at planting (the POSIX ACL entry of ``add-user --read-only``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base import acl

from .conftest import LEAVER, MEMBER, OWNER, VIEWER, Runner, one_line

pytestmark = pytest.mark.timeout(600)
Steps = dict[str, subprocess.CompletedProcess[str]]
_names = itertools.count()


# -- helpers ----------------------------------------------------------------------------
def home(mu: Runner, user: str) -> Path:
    return Path(mu.accounts[user].pw_dir)


def fingerprint(path: Path) -> dict[str, str]:
    """Every file of a home directory (not .cache, which the launcher legitimately fills)
    and a digest of its content."""
    out = {}
    for p in sorted(path.rglob("*")):
        if ".cache" in p.relative_to(path).parts or p.is_symlink() or not p.is_file():
            continue
        out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def add_task(mu: Runner, app: str, wf: str, name: str = "t", user: str = OWNER
             ) -> tuple[int, Path]:
    proc = mu.run(user, [str(mu.venv / "bin" / "balsam-mpi"), "task", "add", "--app", app,
                          "--workflow", wf, "--name", name, "--json"])
    assert proc.returncode == 0, proc.stderr
    [task_id] = json.loads(proc.stdout)
    assert mu.project is not None
    return task_id, mu.project / "data" / wf / str(task_id // 1000) / f"{name}_{task_id}"


def launch(mu: Runner, wf: str, timeout: float = 120, user: str = OWNER
           ) -> subprocess.CompletedProcess[str]:
    return mu.run(user, [str(mu.venv / "bin" / "python"), "-P", "-m", "balsam_mpi",
                          "--workflow", wf, "--idle-timeout", "1"], timeout=timeout)


def row(mu: Runner, task_id: int) -> dict[str, Any]:
    result = mu.probe(VIEWER, [("SELECT state::text, exit_code, output_tail FROM tasks "
                                "WHERE id = %s", [task_id])])
    state, code, tail = result["results"][0]["rows"][0]
    return {"state": state, "exit_code": code, "tail": tail or ""}


def as_user(mu: Runner, user: str, script: str) -> subprocess.CompletedProcess[str]:
    return mu.bash(user, script)


def refused_line(info: dict[str, Any], *words: str) -> str:
    assert info["state"] == "FAILED", info
    line = info["tail"].strip()
    assert line and "\n" not in line and "Traceback" not in line, info
    for word in words:
        assert word in line, line
    return line


@pytest.fixture(scope="module")
def apps(mu: Runner, enrolled: Steps) -> None:
    cli = str(mu.venv / "bin" / "balsam-mpi")
    for argv in (
        ["fail", "--command", "sh -c 'echo failing output >&2; exit 3'"],
        ["ok", "--command", "sh -c 'echo hello'"],
        ["prep", "--command", "true", "--preprocess", "echo pre"],
        ["family", "--command", "sh -c 'for i in 1 2 3 4 5 6; do sleep 300 & "
         "echo $! >> kids.pid; setsid sh -c \"sleep 300 & echo \\$! >> kids.pid; wait\" & "
         "done; wait'"],
        ["daemon", "--command", "sh -c 'setsid sh -c \"sleep 300 & echo \\$! > daemon.pid\" "
         "& sleep 0.5'"],
    ):
        proc = mu.run(OWNER, [cli, "app", "add", *argv])
        assert proc.returncode == 0 or "exists" in proc.stderr, proc.stderr


# -- a viewer (and a dropped user) writes nothing --------------------------------------
@pytest.mark.parametrize("user", [VIEWER, LEAVER])
def test_a_viewer_or_dropped_user_cannot_write_in_the_project(mu: Runner, apps: None,
                                                             user: str) -> None:
    assert mu.project is not None
    if user == LEAVER:  # dropped (as in test_04, which may not have run)
        (mu.project / "access" / f"{LEAVER}.json").unlink(missing_ok=True)
        assert mu.dbctl(OWNER, "add-user", LEAVER).returncode == 0
        dropped = mu.dbctl(OWNER, "drop-user", LEAVER)
        assert f"{LEAVER} can no longer write" in dropped.stdout, dropped
    task_id, task_dir = add_task(mu, "ok", f"acl{next(_names)}")
    assert launch(mu, task_dir.parts[-3]).returncode == 0  # made by the owner's launcher
    assert row(mu, task_id)["state"] == "JOB_FINISHED"
    p = mu.project
    targets = [p / "x", p / "data" / "x", p / "log" / "x", p / "qsubmit" / "x",
               p / "access" / "x", p / "job-templates" / "x", task_dir / "x",
               task_dir.parent / "x"]
    for target in targets:
        proc = as_user(mu, user, f"mkdir {target}")
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, (target, proc)
        assert len(proc.stderr.strip().splitlines()) == 1
    for existing in (task_dir / "task.out",):
        proc = as_user(mu, user, f"echo forged >> {existing}")
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc
    assert as_user(mu, user, f"cat {task_dir / 'task.out'}").stdout == "hello\n"


def test_the_viewers_own_attack_stops_at_planting(mu: Runner, apps: None) -> None:
    """Issue 14.1 as it happened: the viewer makes the directory of the owner's next task
    and links task.err to ~owner/.pgpass. Now the first mkdir is refused."""
    before = fingerprint(home(mu, OWNER))
    task_id, task_dir = add_task(mu, "fail", f"viewer{next(_names)}")
    pgpass = home(mu, OWNER) / ".pgpass"
    proc = as_user(mu, VIEWER, f"mkdir -p {task_dir} && ln -s {pgpass} {task_dir}/task.err")
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert launch(mu, task_dir.parts[-3]).returncode == 0
    info = row(mu, task_id)
    assert info["state"] == "FAILED" and info["tail"] == "failing output\n"
    assert fingerprint(home(mu, OWNER)) == before


# -- a member's plants: refused by the launcher, one line each --------------------------
PLANTS = {
    # name: (app, script run by the member in the task's directory, words of the refusal)
    "task.err symlink to ~/.pgpass": ("fail", "ln -s {home}/.pgpass task.err",
                                      ("task.err", "symbolic link")),
    "task.out symlink to ~/.bashrc": ("ok", "ln -s {home}/.bashrc task.out",
                                      ("task.out", "symbolic link")),
    "task.out FIFO": ("ok", "mkfifo task.out", ("task.out", "FIFO")),
    "task.err socket": ("fail", "python3 -c \"import socket; socket.socket(socket.AF_UNIX)"
                                ".bind('task.err')\"", ("task.err", "socket")),
    "task.out hard link": ("ok", "echo mine > ../mine && ln ../mine task.out",
                           ("task.out", "hard links")),
    "preprocess.err symlink": ("prep", "ln -s {home}/.bashrc preprocess.err",
                               ("preprocess.err", "symbolic link")),
}
DIRS = ("workflow", "shard", "task")  # a symlink in place of each directory level


@pytest.fixture(scope="module")
def planted(mu: Runner, apps: None) -> Iterator[dict[str, Any]]:
    """Plant everything, run the owner's launcher once over it all (one bad task never
    stops the others), and hand each test its task's outcome."""
    assert mu.project is not None
    owner_home = home(mu, OWNER)
    before = fingerprint(owner_home)
    wf = f"planted{next(_names)}"
    cases: dict[str, tuple[int, tuple[str, ...]]] = {}
    for name, (app, script, words) in PLANTS.items():
        task_id, task_dir = add_task(mu, app, wf, name="p")
        proc = as_user(mu, MEMBER, f"mkdir -p {task_dir} && cd {task_dir} && "
                                   + script.format(home=owner_home))
        assert proc.returncode == 0, (name, proc.stderr)
        cases[name] = (task_id, words)
    for level in DIRS:
        dwf = f"{wf}{level}"
        task_id, task_dir = add_task(mu, "ok", dwf, name="d")
        link = {"workflow": task_dir.parents[1], "shard": task_dir.parent,
                "task": task_dir}[level]
        proc = as_user(mu, MEMBER, f"mkdir -p {link.parent} && ln -s {owner_home} {link}")
        assert proc.returncode == 0, proc.stderr
        cases[f"{level} directory symlink"] = (task_id, (link.name, "symbolic link"))
    # The launcher's log, at every name this launcher may use (run name: host and the
    # launcher's parent, this test process; then .1, .2, ...) not yet taken by earlier
    # launchers of this test session, linked to the owner's .bashrc.
    run = f"{socket.gethostname()}-{os.getpid()}"
    base = f"{mu.project}/log/launcher_{run}_r0"
    proc = as_user(mu, MEMBER, f"for n in '' $(seq -f .%g 1 60); do "
                               f"[ -e {base}$n.log ] || ln -s {owner_home}/.bashrc {base}$n.log; "
                               "done")
    assert proc.returncode == 0, proc.stderr
    links = {p.name for p in (mu.project / "log").glob(f"launcher_{run}_r0*.log")
             if p.is_symlink()}
    assert links
    t0 = time.monotonic()
    runs = [launch(mu, w) for w in (wf, *(f"{wf}{lv}" for lv in DIRS))]
    yield {"cases": cases, "runs": runs, "seconds": time.monotonic() - t0,
           "before": before, "after": fingerprint(owner_home), "run": run, "links": links}


@pytest.mark.parametrize("case", [*PLANTS, *(f"{lv} directory symlink" for lv in DIRS)])
def test_a_members_plant_fails_the_task_with_one_line(mu: Runner, planted: dict[str, Any],
                                                      case: str) -> None:
    task_id, words = planted["cases"][case]
    line = refused_line(row(mu, task_id), *words)
    assert "refusing" in line
    assert "BEGIN" not in line and ":*:*:" not in line  # nothing of ~owner/.pgpass


def test_the_launcher_ran_through_every_plant(planted: dict[str, Any]) -> None:
    """No hang (a FIFO hung it for 11 minutes), no traceback, every run ended by itself."""
    for proc in planted["runs"]:
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    assert planted["seconds"] < 100


def test_the_owners_files_are_untouched(planted: dict[str, Any]) -> None:
    assert planted["after"] == planted["before"]


def test_the_launchers_log_is_never_written_through_a_link(mu: Runner,
                                                          planted: dict[str, Any]) -> None:
    assert mu.project is not None
    logs = sorted((mu.project / "log").glob(f"launcher_{planted['run']}_r0*.log"))
    real = [p for p in logs if not p.is_symlink()]
    still_links = {p.name for p in logs if p.is_symlink()}
    assert still_links == planted["links"]  # every planted name passed over, none followed
    assert len(real) >= len(planted["runs"])
    for path in real:
        st = path.stat()
        assert st.st_mode & 0o777 == 0o640 and st.st_uid == mu.accounts[OWNER].pw_uid
        proc = as_user(mu, MEMBER, f"echo forged line >> {path}")
        assert proc.returncode != 0 and "Permission denied" in proc.stderr


def test_a_directory_a_viewer_made_before_the_acl_is_refused(mu: Runner, apps: None) -> None:
    """A viewer who was a member (or wrote before the ACL existed) may still own a
    directory in data/; the launcher refuses to enter it. (Made here by root, chowned.)"""
    task_id, task_dir = add_task(mu, "ok", f"old{next(_names)}")
    task_dir.parent.mkdir(parents=True)  # the project group, by data/'s setgid bit
    os.chown(task_dir.parent, mu.accounts[VIEWER].pw_uid, -1)
    os.chown(task_dir.parent.parent, mu.accounts[OWNER].pw_uid, -1)
    assert launch(mu, task_dir.parts[-3]).returncode == 0
    refused_line(row(mu, task_id), task_dir.parent.name, f"owned by {VIEWER}")
    assert list(task_dir.parent.iterdir()) == []


def test_an_earlier_output_this_user_may_not_write_is_kept_and_written_beside(
        mu: Runner, apps: None) -> None:
    """A retried task's task.out from another member's launcher, without group write: the
    run goes on in task.1.out (O_EXCL), the earlier output is kept as it was."""
    task_id, task_dir = add_task(mu, "ok", f"retry{next(_names)}")
    proc = as_user(mu, MEMBER, f"mkdir -p {task_dir} && echo first run > {task_dir}/task.out "
                               f"&& chmod 640 {task_dir}/task.out")
    assert proc.returncode == 0, proc.stderr
    assert launch(mu, task_dir.parts[-3]).returncode == 0
    assert row(mu, task_id)["state"] == "JOB_FINISHED"
    assert (task_dir / "task.out").read_text() == "first run\n"
    assert (task_dir / "task.1.out").read_text() == "hello\n"


def test_task_out_reads_every_runs_output_and_follows_no_plant(mu: Runner,
                                                             apps: None) -> None:
    """`balsam-mpi task out`: a viewer reads what a member's and the owner's runs wrote
    (the read-only ACL entry); the owner, reading a member's task whose task.out the
    member linked to the owner's own private file, gets one refusal line and nothing of
    the file."""
    cli = str(mu.venv / "bin" / "balsam-mpi")
    task_id, task_dir = add_task(mu, "ok", f"out{next(_names)}")
    proc = as_user(mu, MEMBER, f"mkdir -p {task_dir} && echo first run > {task_dir}/task.out "
                               f"&& chmod 640 {task_dir}/task.out")
    assert proc.returncode == 0, proc.stderr
    assert launch(mu, task_dir.parts[-3]).returncode == 0
    seen = mu.run(VIEWER, [cli, "task", "out", str(task_id)])
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.index("first run") < seen.stdout.index("hello")
    assert "task.1.out <==" in seen.stdout
    secret = home(mu, OWNER) / f"private{next(_names)}.txt"
    assert mu.bash(OWNER, f"umask 077 && echo owner-only > {secret}").returncode == 0
    member_task, member_dir = add_task(mu, "ok", f"out{next(_names)}", user=MEMBER)
    proc = as_user(mu, MEMBER, f"mkdir -p {member_dir} && ln -s {secret} {member_dir}/task.out")
    assert proc.returncode == 0, proc.stderr
    refused = mu.run(OWNER, [cli, "task", "out", str(member_task)])
    assert "owner-only" not in refused.stdout + refused.stderr
    line = one_line(refused)
    assert "refusing data/" in line and "symbolic link" in line, line


def test_directories_that_exist_when_a_viewer_is_added(mu: Runner, apps: None) -> None:
    """add-user --read-only fixes what the owner owns at once; members' launchers fix their
    own directories as they pass; what the new viewer made before is refused."""
    assert mu.project is not None
    (mu.project / "access" / f"{LEAVER}.json").unlink(missing_ok=True)
    assert mu.dbctl(OWNER, "add-user", LEAVER).returncode == 0  # a member, for now
    n = next(_names)
    _t1, owners = add_task(mu, "ok", f"exist{n}")
    assert launch(mu, f"exist{n}").returncode == 0
    _t2, members = add_task(mu, "ok", f"existm{n}", user=MEMBER)
    assert launch(mu, f"existm{n}", user=MEMBER).returncode == 0
    theirs = mu.project / "data" / f"theirs{n}"
    assert as_user(mu, LEAVER, f"mkdir {theirs} && mkdir {owners}/x1").returncode == 0
    added = mu.dbctl(OWNER, "add-user", LEAVER, "--read-only")
    assert added.returncode == 0, added.stderr
    assert "belong to other members" in added.stdout, added.stdout
    denied = as_user(mu, LEAVER, f"mkdir {owners}/x2")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # A member's directory: still open to them until that member's launcher passes by.
    assert as_user(mu, LEAVER, f"mkdir {members.parent}/x3").returncode == 0
    _t3, again = add_task(mu, "ok", f"existm{n}", user=MEMBER)
    assert launch(mu, f"existm{n}", user=MEMBER).returncode == 0
    assert again.parent == members.parent
    for target in (members.parent / "x4", again / "x4"):
        proc = as_user(mu, LEAVER, f"mkdir {target}")
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, target
    # What they made before they became a viewer is refused (a workflow directory here).
    t4, _ = add_task(mu, "ok", f"theirs{n}")
    assert launch(mu, f"theirs{n}").returncode == 0
    refused_line(row(mu, t4), f"data/theirs{n}", f"owned by {LEAVER}")
    # fix-perms puts back an entry someone removed (the record is data/'s ACL).
    log_dir = str(mu.project / "log")
    entries = acl.read(log_dir, acl.DEFAULT)
    assert entries is not None
    uid = mu.accounts[LEAVER].pw_uid
    stripped = acl.with_barred(entries, unbar=[uid])
    os.setxattr(log_dir, acl.ACCESS, acl.encode(stripped))
    assert as_user(mu, LEAVER, f"mkdir {log_dir}/x5").returncode == 0
    fixed = mu.dbctl(OWNER, "fix-perms")
    assert fixed.returncode == 0, fixed.stderr
    proc = as_user(mu, LEAVER, f"mkdir {log_dir}/x6")
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert mu.dbctl(OWNER, "drop-user", LEAVER).returncode == 0


def test_a_viewer_not_yet_enrolled_can_still_leave_a_request(mu: Runner, apps: None) -> None:
    """Owner first, viewer elsewhere: access/ stays writable for the viewer until their
    request is applied; then it is read-only for them too."""
    assert mu.project is not None
    (mu.project / "access" / f"{LEAVER}.json").unlink(missing_ok=True)
    mu.dbctl(OWNER, "add-user", LEAVER)
    assert mu.dbctl(OWNER, "drop-user", LEAVER).returncode == 0  # no password any more
    added = mu.dbctl(OWNER, "add-user", LEAVER, "--read-only")
    assert added.returncode == 0 and "access/ stays writable" in added.stdout, added
    request = ("from balsam_mpi.base.project import Project\n"
               "from balsam_mpi.dbctl import credentials, enroll\n"
               "pw = credentials.new_password()\n"
               "print(enroll.write_request(Project.from_env(), credentials._me().pw_name,\n"
               "                           credentials.scram_verifier(pw), 'another-host'))\n")
    made = mu.run(LEAVER, [str(mu.venv / "bin" / "python"), "-c", request])
    assert made.returncode == 0, made.stderr
    applied = mu.dbctl(OWNER, "add-user", LEAVER, "--read-only")
    assert applied.returncode == 0 and "enrolled as a viewer" in applied.stdout, applied
    assert not (mu.project / "access" / f"{LEAVER}.json").exists()
    proc = as_user(mu, LEAVER, f"touch {mu.project}/access/{LEAVER}.json")
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert mu.dbctl(OWNER, "drop-user", LEAVER).returncode == 0


# -- qsubmit/: the predictable local-*.log names ----------------------------------------
def test_planted_qsubmit_names_do_not_break_a_local_submission(mu: Runner,
                                                              apps: None) -> None:
    """Issue 14.6: symlinks at the predictable qsubmit/local-<id>-<time>.log names made the
    owner's local submission fail with a traceback. Each submission now has a directory
    of its own, whose predictable name is planted too."""
    assert mu.project is not None
    owner_home = home(mu, OWNER)
    before = fingerprint(owner_home)
    last = mu.probe(MEMBER, ["SELECT coalesce(max(id), 0) FROM batch_jobs"])
    next_id = int(last["results"][0]["rows"][0][0]) + 1
    plant = (
        "import os, time, sys\n"
        f"q, home, first = {str(mu.project / 'qsubmit')!r}, {str(owner_home)!r}, {next_id}\n"
        "now = time.time()\n"
        "for job in range(first, first + 3):\n"
        "    for s in range(-2, 90):\n"
        "        stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))\n"
        "        for ext, target in (('.log', '.bashrc'), ('.sh', '.profile'), ('', '')):\n"
        "            os.symlink(os.path.join(home, target),\n"
        "                       os.path.join(q, f'local-{job}-{stamp}{ext}'))\n")
    proc = mu.run(MEMBER, [str(mu.venv / "bin" / "python"), "-c", plant])
    assert proc.returncode == 0, proc.stderr
    sub = mu.run(OWNER, [str(mu.venv / "bin" / "balsam-mpi"), "submit", "--scheduler",
                         "local", "-n", "1", "--workflow", f"none{next(_names)}", "--json"])
    assert sub.returncode == 0 and "Traceback" not in sub.stderr, sub.stderr
    done = json.loads(sub.stdout)
    try:
        script, log = Path(done["script"]), Path(done["log"])
        assert not script.is_symlink() and not log.is_symlink()
        # The submission's own directory: the planted link at its name is passed by
        assert script.parent.name.endswith(".1") and log.parent == script.parent, done
        assert not script.parent.is_symlink()
        assert script.parent.stat().st_uid == mu.accounts[OWNER].pw_uid
        # qsubmit/'s default ACL lets members write there; what it passes on to the
        # submission's directory must not (the scheduler writes the job's output there)
        tried = mu.bash(MEMBER, f"ln -s {owner_home}/.bashrc {script.parent}/balsam-1.out")
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, tried
        assert mu.bash(MEMBER, f"cat {script}").returncode == 0  # the group still reads
        assert log.stat().st_uid == mu.accounts[OWNER].pw_uid
        assert log.stat().st_mode & 0o777 == 0o640
    finally:
        with_pid = int(done["pid"])
        try:
            os.killpg(with_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(with_pid):
            time.sleep(0.2)
    assert fingerprint(owner_home) == before


# -- qsubmit/: modules planted where batch jobs start ---------------------------------------
def test_modules_planted_in_qsubmit_never_run_in_anyones_job(mu: Runner, apps: None) -> None:
    """A batch job starts in qsubmit/, which every member may write (3770), and its
    Pythons ran as `python -m`, which imports from the working directory first: a member's
    argparse.py, selectors.py, json.py or balsam_mpi/ there ran as the owner in the owner's
    next job — the local starter, the launcher, the node's zygote and its calls."""
    assert mu.project is not None
    marks = Path(tempfile.mkdtemp(prefix="bt-plant-marks-", dir="/tmp"))
    marks.chmod(0o1777)
    qdir = mu.project / "qsubmit"
    rels = ("argparse.py", "selectors.py", "json.py", "balsam_mpi/__init__.py")
    files = {str(qdir / rel): ("import os\n"
                               f"open(os.path.join({str(marks)!r}, {rel.replace('/', '_')!r}"
                               " + '-' + str(os.getuid())), 'w').close()\n")
             for rel in rels}
    writer = ("import json, os, sys\n"
              "for path, body in json.load(sys.stdin).items():\n"
              "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
              "    with open(path, 'x') as fh:\n"
              "        fh.write(body)\n")
    proc = mu.run(MEMBER, [str(mu.venv / "bin" / "python"), "-c", writer],
                  input_text=json.dumps(files))
    assert proc.returncode == 0, proc.stderr
    try:
        cli = str(mu.venv / "bin" / "balsam-mpi")
        wf = f"plantq{next(_names)}"
        made = mu.run(OWNER, [cli, "app", "add", "pyjson", "--python", "json:dumps"])
        assert made.returncode == 0 or "exists" in made.stderr, made.stderr
        shell_id, _ = add_task(mu, "ok", wf)
        added = mu.run(OWNER, [cli, "task", "add", "--app", "pyjson", "--workflow", wf,
                               "--name", "py", "--param", "obj=[1, 2]", "--json"])
        assert added.returncode == 0, added.stderr
        [py_id] = json.loads(added.stdout)
        sub = mu.run(OWNER, [cli, "submit", "--scheduler", "local", "-n", "1", "--workflow",
                             wf, "--idle-timeout", "1", "--json"])
        assert sub.returncode == 0, sub.stderr
        done = json.loads(sub.stdout)
        assert not _wait_gone([int(done["pid"])], timeout=120), "the local job did not end"
        log = Path(done["log"]).read_text(errors="replace")
        assert row(mu, shell_id)["state"] == "JOB_FINISHED", log
        assert row(mu, py_id)["state"] == "JOB_FINISHED", log
        assert sorted(p.name for p in marks.iterdir()) == []
    finally:
        mu.bash(MEMBER, f"rm -rf {qdir}/argparse.py {qdir}/selectors.py {qdir}/json.py "
                        f"{qdir}/balsam_mpi")
        shutil.rmtree(marks, ignore_errors=True)


# -- stage-in: a planted link in a parent's directory is not passed on ------------------
def test_stagein_never_links_a_planted_link_out_of_the_parents(mu: Runner,
                                                               apps: None) -> None:
    assert mu.project is not None
    wf = f"stage{next(_names)}"
    parent_id, parent = add_task(mu, "ok", wf, "parent")
    _child_id, child = add_task(mu, "ok", wf, "child")
    proc = as_user(mu, MEMBER, f"mkdir -p {parent} && echo data > {parent}/real.dat && "
                               f"ln -s {home(mu, OWNER)}/.pgpass {parent}/stolen.dat")
    assert proc.returncode == 0, proc.stderr
    code = ("import sys\nfrom pathlib import Path\nfrom balsam_mpi.node.stagein import link_inputs\n"
            f"made = link_inputs(Path({str(child)!r}), [Path({str(parent)!r})], ['*.dat'])\n"
            "print(' '.join(sorted(p.name for p in made)))\n")
    done = mu.run(OWNER, [str(mu.venv / "bin" / "python"), "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["real.dat"]
    assert "stolen.dat" in done.stderr and "outside the project" in done.stderr
    assert not (child / "stolen.dat").is_symlink()


# -- issue 15.9 as a real user: nothing a task forks outlives it ------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_grandchildren_die_with_a_killed_launcher(mu: Runner, apps: None) -> None:
    """Issue 15.9: 12 of 12 grandchildren survived kill -9 of their launcher."""
    _task_id, task_dir = add_task(mu, "family", f"family{next(_names)}")
    launcher = mu.popen(OWNER, [str(mu.venv / "bin" / "python"), "-P", "-m", "balsam_mpi",
                                "--workflow", task_dir.parts[-3], "--idle-timeout", "60"])
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 12:
            assert time.monotonic() < deadline, "the task did not start its children"
            time.sleep(0.1)
            with_file = task_dir / "kids.pid"
            pids = [int(x) for x in with_file.read_text().split()] if with_file.exists() else []
        assert all(_alive(p) for p in pids)
        launcher.kill()  # kill -9
        launcher.wait(timeout=30)
        assert _wait_gone(pids) == [], "grandchildren outlived their launcher"
    finally:
        launcher.kill()
        launcher.communicate()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_daemon_dies_when_its_task_ends(mu: Runner, apps: None) -> None:
    task_id, task_dir = add_task(mu, "daemon", f"daemon{next(_names)}")
    assert launch(mu, task_dir.parts[-3]).returncode == 0
    assert row(mu, task_id)["state"] == "JOB_FINISHED"
    pid = int((task_dir / "daemon.pid").read_text())
    try:
        assert _wait_gone([pid]) == [], "a double-forked daemon outlived its task"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
