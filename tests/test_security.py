"""Shared-host safety: a private spool by default, a shared one on request, job files of untrusted
users refused, and no planted symlink makes a worker write outside the spool."""

import json
import os
import pwd
import stat
import subprocess

import pytest

from conftest import QUEUECTL, wait_until

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_spool_is_private_by_default(spool):
    assert mode(spool.root) == 0o700
    for folder in ("tmp", "pending", "processing", "done", "dead", "rejected", "logs", "workers", "ids"):
        assert mode(spool.path(folder)) == 0o700, folder
    job_id = spool.enqueue({"command": "true"})
    (name,) = spool.ls("pending")
    assert mode(spool.path("pending", name)) == 0o600 and job_id in name


@root_only
def test_init_group_shares_the_spool_with_setgid_folders(spool, tmp_path):
    import grp

    subprocess.run(["groupadd", "-f", "queuectl-test"], check=True)
    gid = grp.getgrnam("queuectl-test").gr_gid
    shared = str(tmp_path / "shared")
    p = subprocess.run([QUEUECTL, "--spool", shared, "init", "--group", "queuectl-test"], capture_output=True, text=True, env=spool.env)
    assert p.returncode == 0, p.stderr
    for path in [shared] + [os.path.join(shared, d) for d in ("pending", "tmp", "logs", "ids")]:
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_gid == gid, path
    env = dict(spool.env, QUEUECTL_SPOOL=shared)
    subprocess.run([QUEUECTL, "enqueue", '{"id": "g", "command": "true"}'], check=True, env=env, capture_output=True)
    (name,) = os.listdir(os.path.join(shared, "pending"))
    st = os.lstat(os.path.join(shared, "pending", name))
    assert st.st_gid == gid and st.st_mode & 0o040  # the group can read it


def test_init_group_with_an_unknown_group_is_an_error(spool, tmp_path):
    p = spool.run("--spool", str(tmp_path / "x"), "init", "--group", "no-such-group-here")
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "no group named" in p.stderr


@root_only
def test_job_files_of_untrusted_users_are_left_waiting_until_trusted(spool, tmp_path):
    """An owner the worker does not trust is not a fault of the job: the file stays in pending/
    (never rejected, never rewritten), status says whom it waits for, and a worker that trusts
    its owner runs it."""
    subprocess.run(["useradd", "-M", "queuectl-other"], capture_output=True)
    other = pwd.getpwnam("queuectl-other")
    marker = tmp_path / "ran"
    tmp = spool.path("tmp", "theirs.json")
    with open(tmp, "w") as f:
        json.dump({"command": f"echo theirs >> {marker}"}, f)
    os.chown(tmp, other.pw_uid, -1)
    os.rename(tmp, spool.path("pending", "theirs.json"))
    p = spool.run("worker", "start", "--burst", check=0)  # it exits: the file is not its work
    assert spool.ls("rejected") == [] and spool.ls("pending") == ["theirs.json"]
    assert os.lstat(spool.path("pending", "theirs.json")).st_uid == other.pw_uid
    assert "left pending/'theirs.json' for a worker that trusts user queuectl-other" in p.stderr
    assert not marker.exists()

    spool.start_workers()
    wait_until(lambda: spool.json("status", "--json")["untrusted"])
    assert spool.json("status", "--json")["untrusted"] == [{"user": "queuectl-other", "uid": other.pw_uid, "pending": 1}]
    assert "1 pending job(s) of user queuectl-other: no running worker trusts queuectl-other" in spool.run("status", check=0).stdout
    spool.run("config", "set", "trusted-users", "queuectl-other", check=0)
    wait_until(lambda: marker.exists() and spool.counts()["completed"] == 1, timeout=20)
    assert marker.read_text() == "theirs\n"


def test_trusted_users_refuses_unknown_names(spool):
    p = spool.run("config", "set", "trusted-users", "nobody-by-this-name")
    assert p.returncode == 2 and "no user named" in p.stderr
    assert spool.run("config", "get", "trusted-users", check=0).stdout == "\n"


def test_symlink_planted_in_logs_never_redirects_a_write(spool, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    spool.enqueue({"id": "j", "command": "echo overwritten"})
    os.symlink(victim, spool.path("logs", "j.1.log"))  # the name the first attempt's log will get
    spool.run("worker", "start", "--burst", check=0)
    assert victim.read_text() == "precious\n"
    assert spool.run("logs", "j", check=0).stdout == "overwritten\n"
    assert not os.path.islink(spool.path("logs", "j.1.log"))


def test_symlinks_planted_for_done_and_heartbeat_names_are_replaced_not_followed(spool, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    spool.enqueue({"id": "j", "command": "true"})
    os.symlink(victim, spool.path("done", "j.json"))
    spool.run("worker", "start", "--burst", check=0)
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(spool.path("done", "j.json")) and spool.show("j")["state"] == "completed"


def test_a_spool_folder_replaced_by_a_symlink_is_refused(spool, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rmdir(spool.path("logs"))
    os.symlink(outside, spool.path("logs"))
    p = spool.run("enqueue", '{"command": "true"}')
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "symlink" in p.stderr, p.stderr
    p = spool.run("worker", "start", "--burst")
    assert p.returncode == 1 and "symlink" in p.stderr
    assert os.listdir(outside) == []


def test_a_symlink_in_pending_is_rejected_without_touching_its_target(spool, tmp_path):
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"command": f"touch {tmp_path / 'ran'}"}))
    os.symlink(target, spool.path("pending", "link.json"))
    spool.run("worker", "start", "--burst", check=0)
    wait_until(lambda: "link.json" in spool.ls("rejected"))
    assert os.path.islink(spool.path("rejected", "link.json"))
    assert not (tmp_path / "ran").exists() and json.loads(target.read_text())["command"].startswith("touch")
