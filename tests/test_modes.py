"""Issue 9: every file and folder queuectl creates has its documented mode whatever the umask,
with real users: a group spool's folders 2770 and files 0640 (never writable but by their owner:
a member cannot edit a waiting job of the owner's in place), a private spool's 0700 and 0600.
Each user's pool writes its own worker log; settings are changed by the spool's owner only."""

import os
import pwd
import stat
import subprocess

import pytest

from conftest import QUEUECTL, wait_until
from unixusers import UserSpool, shared_dir, users

UMASKS = [0o002, 0o022, 0o077]


def modes(root):
    """{path relative to ROOT: (kind, mode with setgid)} of everything in the spool."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) and os.path.dirname(os.path.relpath(path, root)) == "ids":
                continue  # a reservation: a symlink naming a token (spool_layout.md, Ids); a link's mode means nothing
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
            out[os.path.relpath(path, root)] = (kind, stat.S_IMODE(st.st_mode))
    return out


def assert_modes(root, dir_mode, file_mode):
    found = modes(root)
    # a rejected drop-in is kept as its writer made it (the same inode, the writer's mode): not queuectl's
    found = {p: v for p, v in found.items() if p != "rejected/bad.json"}
    wrong = {p: f"{k} {m:04o}" for p, (k, m) in found.items() if (k, m) != (("dir", dir_mode) if k == "dir" else ("file", file_mode))}
    assert wrong == {}, f"wanted folders {dir_mode:04o} and files {file_mode:04o}; found {wrong}"
    return found


def stop_everything(root):
    subprocess.run([QUEUECTL, "worker", "stop", "--timeout", "5"], env=dict(os.environ, QUEUECTL_SPOOL=root), capture_output=True, timeout=60)


@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask-{u:03o}")
def test_every_file_of_a_group_spool_has_its_documented_mode(umask):
    with users(2, group=True) as ((alice, bob), group):
        root = os.path.join(shared_dir(alice), "spool")
        a, b = UserSpool(root, alice, umask), UserSpool(root, bob, umask)
        try:
            a.run("init", "--group", group, check=0)
            a.run("config", "set", "trusted-users", f"{alice},{bob}", check=0)
            a.run("config", "set", "max-retries", "0", check=0)
            a.run("pause", check=0)
            assert modes(root)["paused"] == ("file", 0o640)
            b.run("resume", check=0)
            a.enqueue({"id": "a-ok", "command": "echo from a"})
            b.enqueue({"id": "b-fails", "command": "echo from b; exit 3"})
            b.shell(f"printf '{{not json' > {root}/tmp/x && mv {root}/tmp/x {root}/pending/bad.json")
            b.shell(f"printf '{{\"command\": \"echo dropped\"}}' > {root}/tmp/y && mv {root}/tmp/y {root}/pending/dropped.json")
            a.run("worker", "start", "--detach", check=0)
            b.run("worker", "start", "--detach", check=0)
            wait_until(lambda: {"a-ok.json", "dropped.json"} <= set(os.listdir(os.path.join(root, "done"))), timeout=30)
            wait_until(lambda: os.listdir(os.path.join(root, "dead")) == ["b-fails.json"], timeout=30)
            wait_until(lambda: "bad.json.reason" in os.listdir(os.path.join(root, "rejected")), timeout=30)
            wait_until(lambda: os.listdir(os.path.join(root, "processing")) == [], timeout=30)  # the rejection's claim gone
            running = assert_modes(root, 0o2770, 0o640)  # heartbeats included
            assert any(p.startswith("workers/") for p in running)
            assert {"worker.log", f"worker.{bob}.log", "config.json", "config.json.lock"} <= set(running)

            # each user's pool log is their own, and the group may read it
            assert "running" not in a.shell(f"cat {root}/worker.{bob}.log").stderr
            assert b.shell(f"echo x >> {root}/worker.log", check=None).returncode != 0

            # job files are never writable by another member (hole 2: editing a waiting job in place)
            alices = [os.path.join(root, p) for p, (k, _) in running.items() if k == "file" and os.lstat(os.path.join(root, p)).st_uid != pwd.getpwnam(bob).pw_uid]
            assert any(p.endswith(".json") for p in alices)
            writable = b.shell("for f in " + " ".join(alices) + '; do [ -w "$f" ] && echo "$f"; done; true').stdout
            assert writable == "", f"{bob} may write these files of others: {writable}"

            # settings are changed by the spool's owner only: the error says whose and what to do
            p = b.run("config", "set", "max-retries", "5")
            assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
            assert p.stderr == f"queuectl: only the spool's owner {alice} may change its settings ({root}/config.json)\n", p.stderr
        finally:
            stop_everything(root)
        assert_modes(root, 0o2770, 0o640)


@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask-{u:03o}")
def test_every_file_of_a_private_spool_is_its_owners_alone(umask):
    with users(1) as ((alice,), _):
        root = os.path.join(shared_dir(alice), "spool")
        a = UserSpool(root, alice, umask)
        try:
            a.run("init", check=0)
            a.run("config", "set", "max-retries", "0", check=0)
            a.enqueue({"id": "ok", "command": "echo out"})
            a.enqueue({"id": "fails", "command": "exit 1"})
            a.shell(f"printf '{{not json' > {root}/tmp/x && mv {root}/tmp/x {root}/pending/bad.json")
            a.run("worker", "start", "--detach", check=0)
            wait_until(lambda: os.listdir(os.path.join(root, "dead")) == ["fails.json"], timeout=30)
            wait_until(lambda: "bad.json.reason" in os.listdir(os.path.join(root, "rejected")), timeout=30)
            wait_until(lambda: os.listdir(os.path.join(root, "processing")) == [], timeout=30)
            assert "worker.log" in assert_modes(root, 0o700, 0o600)
        finally:
            stop_everything(root)


def test_a_member_whose_pool_cannot_start_is_told_where_to_look():
    """B's detached pool in A's group spool logs to B's own worker log, named in its messages."""
    with users(2, group=True) as ((alice, bob), group):
        root = os.path.join(shared_dir(alice), "spool")
        a, b = UserSpool(root, alice), UserSpool(root, bob)
        try:
            a.run("init", "--group", group, check=0)
            p = b.run("worker", "start", "--detach", check=0)
            assert f"log: {root}/worker.{bob}.log" in p.stderr, p.stderr
            # a file planted at B's log name by someone else is refused, naming it and its owner
            stop_everything(root)
            os.unlink(f"{root}/worker.{bob}.log")
            a.shell(f"touch {root}/worker.{bob}.log")
            p = b.run("worker", "start", "--detach")
            assert p.returncode == 1 and f"{root}/worker.{bob}.log" in p.stderr and alice in p.stderr, p.stderr
        finally:
            stop_everything(root)
