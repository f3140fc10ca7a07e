"""The system spool (queuectl init --system; spool_layout.md, Security, "The system spool"):
real Unix users submit, root's workers run each job as its file's owner. Runs as root (CI does);
a test that cannot make users fails loudly (tests/unixusers.py)."""

import json
import os
import pwd
import socket
import stat
import subprocess

import pytest

from conftest import Spool, wait_until
from spoolnames import namespace
from unixusers import UserSpool, need_root, shared_dir, users

SECRET = "QC_ROOT_SECRET"  # in the root worker's environment: no job may see it


@pytest.fixture
def system(tmp_path):
    """A system spool made by root in a folder every user can reach, and its root driver."""
    need_root("make a system spool")
    root = os.path.join(shared_dir(), "spool")
    s = Spool(root)
    s.env[SECRET] = "leaked"
    s.run("init", "--system", check=0)
    s.run("config", "set", "heartbeat-seconds", "1", check=0)
    yield s
    s.stop_all()


def _as(system, name):
    return UserSpool(system.root, name)


def _log(system, job_id, seq=1):
    with open(system.path("logs", f"{job_id}.{seq}.log")) as f:
        return f.read()


def _reason(system, name):
    path = system.path("rejected", name + ".reason")
    wait_until(lambda: os.path.exists(path), timeout=20, message=f"{name} was never rejected; rejected/ holds {system.ls('rejected')}")
    with open(path) as f:
        return f.read()


def test_init_system_makes_a_root_spool_with_sticky_shared_folders(system):
    st = os.lstat(system.root)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    marker = os.lstat(system.path("system"))
    assert stat.S_ISREG(marker.st_mode) and marker.st_uid == 0
    modes = {f: stat.S_IMODE(os.lstat(system.path(f)).st_mode) for f in system.ls("")  if os.path.isdir(system.path(f))}
    assert modes == {
        "tmp": 0o1733, "pending": 0o1777, "processing": 0o1777, "dead": 0o1777, "ids": 0o1777, "held": 0o1777, "requests": 0o1777,
        "done": 0o755, "rejected": 0o755, "logs": 0o755, "workers": 0o755,
    }
    assert all(os.lstat(system.path(f)).st_uid == 0 for f in modes)
    assert stat.S_IMODE(os.lstat(system.path("config.json")).st_mode) == 0o644


def test_only_root_makes_a_system_spool_and_runs_its_workers(system):
    with users(1) as (names, _):
        (alice,) = names
        a = _as(system, alice)
        p = UserSpool(os.path.join(shared_dir(alice), "s"), alice).run("init", "--system", check=1)
        assert p.stderr.strip() == "queuectl: only root can make a system spool"
        p = a.run("worker", "start", "--burst", check=1)
        assert "is a system spool: its workers run as root" in p.stderr


def test_each_user_s_jobs_run_as_themselves_and_stay_theirs(system):
    with users(2, group=True) as (names, shared):
        alice, bob = names
        show_me = 'id -un; id -G; echo "HOME=$HOME"; echo "PATH=$PATH"; env | grep -c ' + SECRET + " || true"
        for name in names:
            u = _as(system, name)
            assert u.enqueue({"id": f"{name}-q", "command": show_me}) == f"{name}-q"
            drop = json.dumps({"command": show_me})  # a plain drop-in: tmp/, then rename
            u.shell(f"f={system.root}/tmp/d.$$; printf '%s' '{drop}' > $f && mv $f {system.root}/pending/{name}-drop.json")
        system.start_workers()
        system.wait_counts(completed=4, timeout=30)
        for name in names:
            pw = pwd.getpwnam(name)
            groups = " ".join(map(str, sorted(os.getgrouplist(name, pw.pw_gid))))
            for job_id in (f"{name}-q", f"{name}-drop"):
                lines = _log(system, job_id).split("\n")
                assert lines[0] == name, f"job {job_id} ran as {lines[0]}"
                assert " ".join(sorted(lines[1].split(), key=int)) == groups
                assert lines[2] == f"HOME={pw.pw_dir}"
                assert lines[3] == "PATH=/usr/local/bin:/usr/bin:/bin"
                assert lines[4] == "0", "the root worker's environment leaked into a job"
                for folder, fname in (("done", f"{job_id}.json"), ("logs", f"{job_id}.1.log")):
                    st = os.lstat(system.path(folder, fname))
                    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pw.pw_uid, 0o600), f"{folder}/{fname}"
            assert os.lstat(system.path("ids", f"{name}-q")).st_nlink == 1 and os.path.islink(system.path("ids", f"{name}-q"))
        a, b = _as(system, alice), _as(system, bob)
        assert a.run("logs", f"{alice}-q", check=0).stdout.startswith(alice + "\n")
        assert a.json("show", f"{alice}-drop")["state"] == "completed"
        for args in (("logs", f"{bob}-q"), ("show", f"{bob}-drop"), ("logs", "--all", f"{bob}-drop")):
            p = a.run(*args, check=1)
            assert p.stderr.strip().startswith(f"queuectl: job {args[-1]} belongs to user {bob}"), p.stderr
        assert b.run("show", f"{alice}-q", check=1).stderr.strip().startswith(f"queuectl: job {alice}-q belongs to user {alice}")
        p = a.shell(f"cat {system.root}/logs/{bob}-q.1.log", check=None)
        assert p.returncode != 0 and "Permission denied" in p.stderr
        for u in (a, b):
            assert u.json("status", "--json")["counts"]["completed"] == 4


def test_a_user_retries_their_own_dead_job_and_not_another_s(system):
    with users(2) as (names, _):
        alice, bob = names
        a, b = _as(system, alice), _as(system, bob)
        a.enqueue({"id": "af", "command": "echo $(id -un) failed; false", "max_retries": 0})
        b.enqueue({"id": "bf", "command": "false", "max_retries": 0})
        system.start_workers()
        system.wait_counts(dead=2, timeout=30)
        p = a.run("dlq", "retry", "bf", check=1)
        assert p.stderr.strip() == f"queuectl: job 'bf' belongs to user {bob}; only {bob} or root can retry it"
        assert a.run("dlq", "retry", "--all", check=0).stdout.split() == ["af"]
        wait_until(lambda: system.show("af")["attempts"] == 1 and system.show("af")["state"] == "dead" and len(system.show("af").get("previous_runs", [])) == 1, timeout=30)
        assert _log(system, "af", 2) == f"{alice} failed\n"
        st = os.lstat(system.path("dead", "af.json"))
        assert st.st_uid == pwd.getpwnam(alice).pw_uid and stat.S_IMODE(st.st_mode) == 0o600
        assert os.lstat(system.path("dead", "bf.json")).st_uid == pwd.getpwnam(bob).pw_uid
        assert b.run("dlq", "retry", "bf", check=0).stdout.split() == ["bf"]


def test_a_job_whose_owner_no_longer_exists_is_rejected_with_a_reason(system):
    with users(1) as (names, _):
        (carol,) = names
        uid = pwd.getpwnam(carol).pw_uid
        c = _as(system, carol)
        job_id = c.enqueue({"id": "orphan", "command": "touch /tmp/should-not-run"})
        subprocess.run(["userdel", carol], check=True, capture_output=True)
        system.start_workers()
        (name,) = wait_until(lambda: [n for n in system.ls("rejected") if not n.endswith(".reason")], timeout=20)
        assert name.endswith(f"_{job_id}.json")
        assert f"owned by uid {uid}, which is no user of this host" in _reason(system, name)


def test_a_hard_linked_job_file_is_rejected(system):
    with users(1) as (names, _):
        (alice,) = names
        a = _as(system, alice)
        a.shell(f"printf '%s' '{{\"command\": \"id -un\"}}' > {system.root}/tmp/x && ln {system.root}/tmp/x {system.root}/pending/linked.json")
        system.start_workers()
        assert "has 2 hard links; a job file must have exactly one" in _reason(system, "linked.json")
        assert system.ls("logs") == []
        [mine] = a.json("list", "--state", "rejected", "--json")  # the reason is the file owner's to read
        assert mine["name"] == "linked.json" and "has 2 hard links" in mine["reason"]


def test_a_user_cannot_get_anything_run_as_root(system, tmp_path):
    """A drop-in symlink to a root-owned job, a hard link to one, a file planted in processing/
    under a dead worker's claim name: none runs as root."""
    with users(1) as (names, _):
        (alice,) = names
        a = _as(system, alice)
        proof = shared_dir()
        os.chmod(proof, 0o1777)
        root_job = os.path.join(shared_dir(), "rootjob.json")
        with open(root_job, "w") as f:
            json.dump({"command": f"id -un > {proof}/ran-$(id -un)"}, f)
        a.shell(f"ln -s {root_job} {system.root}/pending/sym.json")
        # a hard link of root's file: the kernel refuses it to a user where protected_hardlinks is
        # on; where it is off, the link is made (here by root, as it would be) and must be refused
        a.shell(f"ln {root_job} {system.root}/pending/hard.json", check=None)
        if not os.path.exists(system.path("pending", "hard.json")):
            os.link(root_job, system.path("pending", "hard.json"))
        # a claim of a worker that is dead (a pid that does not exist, in our namespace)
        dead = f"{socket.gethostname().replace('_', '-')}.4000000.1.n{namespace()}"
        job = {"id": "planted", "command": f"id -un > {proof}/ran-$(id -un)", "max_retries": 1, "state": "pending", "attempts": 0,
               "token": "t0", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "priority": 0, "history": []}
        a.shell(f"cat > {system.root}/processing/20260101T000000.000000Z_planted@{dead}.json <<'EOF'\n{json.dumps(job)}\nEOF")
        system.start_workers()
        assert "not a regular file (symlink)" in _reason(system, "sym.json")
        assert "hard links; a job file must have exactly one" in _reason(system, "hard.json")
        wait_until(lambda: os.path.exists(os.path.join(proof, f"ran-{alice}")), timeout=30, message="the planted claim was not recovered and run as its owner")
        assert sorted(os.listdir(proof)) == [f"ran-{alice}"], "something ran as another user than the file's owner"
        wait_until(lambda: os.path.exists(system.path("done", "planted.json")), timeout=20)
        assert os.lstat(system.path("done", "planted.json")).st_uid == pwd.getpwnam(alice).pw_uid


def test_a_job_s_cwd_is_entered_as_its_owner_never_by_root(system):
    with users(1) as (names, _):
        (alice,) = names
        a = _as(system, alice)
        private = shared_dir()
        os.chmod(private, 0o700)  # root's: alice may not enter it
        with open(os.path.join(private, "secret"), "w") as f:
            f.write("root's secret\n")
        os.chmod(os.path.join(private, "secret"), 0o644)
        open_dir = shared_dir()
        a.enqueue({"id": "shut", "command": "cat secret", "cwd": private, "max_retries": 0})
        a.enqueue({"id": "open", "command": "pwd", "cwd": open_dir})
        system.start_workers()
        system.wait_counts(dead=1, completed=1, timeout=30)
        assert system.show("shut")["exit_code"] == 2
        assert "secret" not in _log(system, "shut").replace("cat secret", "") and "root's" not in _log(system, "shut")
        assert _log(system, "open") == open_dir + "\n"


def test_reservations_are_symlinks_without_data_blocks_and_older_forms_still_read(tmp_path):
    """spool_layout.md, Ids: a symlink whose target is the token (no data block, the job file keeps
    one link); a hard link to the job as enqueued, or a file holding the token, still read."""
    from queuectl import job as jobdoc
    from queuectl.spool import Spool as Protocol

    s = Protocol(str(tmp_path / "spool")).ensure()
    job, nb = jobdoc.accept({"id": "new", "command": "true"}, 0.0, 3)
    assert s.enqueue([(job, nb)]) == ["new"]
    st = os.lstat(os.path.join(s.root, "ids", "new"))
    assert stat.S_ISLNK(st.st_mode) and st.st_blocks == 0 and os.readlink(os.path.join(s.root, "ids", "new")) == job["token"]
    (pending,) = os.listdir(os.path.join(s.root, "pending"))
    assert os.lstat(os.path.join(s.root, "pending", pending)).st_nlink == 1
    assert s.reservation("new") == job["token"]
    os.link(os.path.join(s.root, "pending", pending), os.path.join(s.root, "ids", "linked"))
    with open(os.path.join(s.root, "ids", "file"), "w") as f:
        f.write("tok-of-a-drop-in")
    assert (s.reservation("linked"), s.reservation("file"), s.reservation("none")) == (job["token"], "tok-of-a-drop-in", None)
    assert s.reserve_id("new", "other") is False and s.reserve_id("file", "other") is False


def test_every_spool_folder_has_its_system_spool_mode():
    """A folder added to the protocol (layout.FOLDERS) must get a mode in a system spool too:
    without one, init --system does not make it, and what lives there silently fails."""
    from queuectl import layout, sysspool

    assert set(sysspool.FOLDER_MODES) == set(layout.FOLDERS)


def test_another_users_request_does_not_cancel_a_running_job(system):
    """Every user may write into a system spool's requests/; a request counts only if the job's
    owner (or root) made it (Spool.requested): bob cannot stop alice's running job."""
    with users(2) as (names, _):
        alice, bob = names
        marker = os.path.join(shared_dir(owner=alice), "started")
        _as(system, alice).enqueue({"id": "a-run", "command": f"touch {marker}; sleep 30", "max_retries": 0})
        system.start_workers()
        wait_until(lambda: os.path.exists(marker), timeout=20, message="alice's job never started")
        p = _as(system, bob).run("cancel", "a-run", "--timeout", "3s")
        assert p.returncode == 1 and "still running" in p.stderr, p.stderr
        assert os.lstat(system.path("requests", "a-run.cancel")).st_uid == pwd.getpwnam(bob).pw_uid
        assert any("_a-run@" in n for n in system.ls("processing")), system.ls("processing")
        assert system.ls("dead") == [] and system.ls("done") == []
        os.unlink(system.path("requests", "a-run.cancel"))  # root clears the squatted name
        p = _as(system, alice).run("cancel", "a-run", "--timeout", "20s")
        assert (p.returncode, p.stdout) == (0, "a-run: cancelled: its running attempt was stopped\n"), p.stderr
