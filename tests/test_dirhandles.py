"""Issue 9, hole 5: spool folders are reached through directory handles opened at start without
following symlinks, so a folder swapped for a symlink while workers run redirects nothing; and
the fd-relative primitives of spool.py name real paths in their errors."""

import json
import os
import time

import pytest

from conftest import wait_until
from queuectl import fsio
from queuectl.errors import SpoolError
from queuectl.spool import Spool
from test_faults import pool_log, start_pool, stop_pool

SWAPPED = "is not the folder opened at start"


def swap_for_symlink(root, folder, target):
    """What a group member can do to a 2770 spool: move FOLDER aside, put a symlink in its place."""
    os.rename(os.path.join(root, folder), os.path.join(root, folder + ".old"))
    os.symlink(target, os.path.join(root, folder))


def watching(pid):
    """Has process PID an inotify instance (a worker watching pending/)?"""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                return True
        except OSError:
            pass
    return False


def drop(root, folder, name, data):
    tmp = os.path.join(root, "tmp", f"drop.{time.monotonic_ns()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(root, folder, name))


@pytest.mark.parametrize("folder", ["rejected", "done", "logs", "pending"])
def test_a_folder_swapped_for_a_symlink_while_workers_run_redirects_nothing(spool, tmp_path, folder):
    outside = tmp_path / "outside"  # the owner's ~/.local/bin, say
    outside.mkdir()
    spool.run("config", "set", "heartbeat-seconds", "0.2", check=0)
    spool.run("config", "set", "backoff-max", "0", check=0)
    pool = start_pool(spool, tmp_path)
    # watching pending/ (inotify) is by path: a watch set up after the swap would watch the
    # symlink's target, and new files in the real folder would wait for the next rescan
    wait_until(lambda: all(watching(w["pid"]) for w in spool.live_workers()), timeout=20)
    swap_for_symlink(spool.root, folder, str(outside))
    wait_until(lambda: SWAPPED in pool_log(pool), timeout=20)
    where = lambda f: spool.path(f + ".old" if f == folder else f)  # noqa: E731 - the folder the workers hold
    # work that writes into each folder: a rejection, a retry (pending/), a result and a log
    drop(spool.root, "pending.old" if folder == "pending" else "pending", "bad.json", b"{not json")
    job = {"id": "j", "command": "echo out; test -e " + str(tmp_path / "flag"), "max_retries": 1}
    drop(spool.root, "pending.old" if folder == "pending" else "pending", "j.json", json.dumps(job).encode())
    wait_until(lambda: os.path.exists(os.path.join(where("rejected"), "bad.json.reason")), timeout=20)
    wait_until(lambda: os.path.exists(os.path.join(where("dead"), "j.json")), timeout=30)
    assert os.listdir(outside) == []  # nothing written through the symlink
    assert sorted(os.listdir(where("logs"))) == ["j.1.log", "j.2.log"]
    # a command started now refuses the spool, naming the folder and what it is
    p = spool.run("status")
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert spool.path(folder) in p.stderr and "symlink" in p.stderr and "queuectl init" in p.stderr, p.stderr
    log = stop_pool(pool)
    assert len([line for line in log.splitlines() if SWAPPED in line]) == 1, log  # said once
    assert spool.path(folder) in log and "/proc/self/fd" not in log
    assert os.listdir(outside) == []


def test_a_spool_with_a_symlinked_folder_is_refused_at_start(tmp_path):
    root = str(tmp_path / "spool")
    Spool(root).ensure()
    swap_for_symlink(root, "rejected", str(tmp_path))
    with pytest.raises(SpoolError) as e:
        Spool(root).ensure(create=False)
    assert os.path.join(root, "rejected") in str(e.value) and "symlink" in str(e.value)


def test_the_root_may_be_a_symlink_followed_once(tmp_path):
    real = tmp_path / "real"
    Spool(str(real)).ensure()
    os.symlink(real, tmp_path / "link")
    s = Spool(str(tmp_path / "link")).ensure(create=False)
    s._write_file("tmp", "x", b"1")
    assert os.listdir(real / "tmp") == ["x"]


def test_primitives_are_relative_to_the_handles_and_name_real_paths(tmp_path):
    root = str(tmp_path / "spool")
    s = Spool(root).ensure()
    with pytest.raises(FileNotFoundError) as e:
        s._rename("pending", "nope", "done", "x")
    assert e.value.filename == os.path.join(root, "pending", "nope")
    assert e.value.filename2 == os.path.join(root, "done", "x")
    with pytest.raises(FileNotFoundError) as e:
        s._lstat("dead", "gone.json")
    assert e.value.filename == os.path.join(root, "dead", "gone.json") and "/proc" not in str(e.value)
    # a swap after the handles are open: the writes stay in the folder opened first, said once
    s._write_file("rejected", "before", b"1")
    swap_for_symlink(root, "rejected", str(tmp_path))
    s._write_file("rejected", "after", b"2")
    s._link("rejected", "after", "rejected", "again")
    assert sorted(os.listdir(os.path.join(root, "rejected.old"))) == ["after", "again", "before"]
    assert sorted(s._listdir("rejected")) == ["after", "again", "before"]
    (said,) = s.check_folders()
    assert os.path.join(root, "rejected") in said and "symlink" in said
    assert s.check_folders() == []


def test_a_removed_folder_is_opened_again_at_its_next_use(tmp_path):
    root = str(tmp_path / "spool")
    s = Spool(root).ensure()
    os.rmdir(os.path.join(root, "workers"))
    os.mkdir(os.path.join(root, "workers"))
    assert s.check_folders() == []
    s._write_file("workers", "hb", b"1")
    assert os.listdir(os.path.join(root, "workers")) == ["hb"]


def test_handles_are_per_process(tmp_path):
    """A child of a fork opens its own handles: a listing's offset is never shared."""
    s = Spool(str(tmp_path / "spool")).ensure()
    parent = dict(s._handles)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            s._fd("pending")
            os.write(w, json.dumps([s._handles_pid == os.getpid(), sorted(s._handles)]).encode())
        finally:
            os._exit(0)
    os.close(w)
    mine, folders = json.loads(os.read(r, 4096))
    os.waitpid(pid, 0)
    assert mine and folders == ["", "pending"]
    assert s._handles == parent  # the parent's stay as they were


def test_reads_of_a_fifo_return_at_once(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(fsio.NotRegular) as e:
        fsio.read_regular(fifo, 100)
    assert "FIFO" in e.value.describe() and time.monotonic() - start < 1
    folder = os.open(str(tmp_path), os.O_RDONLY)
    try:
        with pytest.raises(fsio.NotRegular):
            fsio.open_regular(os.path.basename(fifo), dir_fd=folder)
    finally:
        os.close(folder)
