"""Process identity: liveness by PID and start time, and the fallback where there is no /proc."""

import os
import subprocess

from conftest import wait_until
from queuectl import procs


def test_start_time_tells_a_live_process_from_a_dead_one():
    p = subprocess.Popen(["sleep", "30"])
    try:
        start = procs.start_time(p.pid)
        assert start and procs.is_alive_here(p.pid, start)
        assert not procs.is_alive_here(p.pid, start + 1)  # same PID, another start: PID reuse
    finally:
        p.kill()
        p.wait()
    assert procs.start_time(p.pid) is None and not procs.is_alive_here(p.pid, start)


def test_without_proc_a_live_pid_counts_as_alive(monkeypatch):
    monkeypatch.setattr(procs, "_HAVE_PROC", False)
    assert procs.start_time(os.getpid()) == 0
    assert procs.is_alive_here(os.getpid(), 12345)
    p = subprocess.Popen(["true"])
    p.wait()
    assert procs.start_time(p.pid) is None


def test_a_zombie_is_not_alive():
    p = subprocess.Popen(["true"])

    def state():
        with open(f"/proc/{p.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    wait_until(lambda: state() == "Z", timeout=10)  # exited, not yet reaped
    assert procs.start_time(p.pid) is None
    p.wait()


def test_worker_ids_round_trip():
    wid = procs.worker_id()
    host, pid, start = procs.split_worker_id(wid)
    assert host == procs.hostname() and pid == os.getpid() and start == procs.start_time(os.getpid())
    assert procs.on_this_host(wid) and not procs.on_this_host("elsewhere.1.2")
