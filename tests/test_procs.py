"""Process identity: worker ids (host.pid.start.nNS), and the liveness test: the pid decides in
this PID namespace, the lease everywhere else and wherever the pid cannot tell (spool_layout.md,
"Worker ids and liveness"). The real namespaces, users and hidepid are in tests/test_identity.py."""

import errno
import os
import subprocess

import pytest

from conftest import wait_until
from queuectl import layout, procs
from queuectl.recovery import holder_is_dead

OTHER_NS = "0" * 8 if procs.namespace() != "0" * 8 else "1" * 8


def me(host=None, pid=None, start=None, ns=None):
    """A worker id for this process, with the fields given replaced."""
    pid = pid or os.getpid()
    return layout.worker_name(host or procs.hostname(), pid, procs.start_time(pid) if start is None else start, ns or procs.namespace())


def test_start_time_tells_a_live_process_from_a_dead_one():
    p = subprocess.Popen(["sleep", "30"])
    try:
        start = procs.start_time(p.pid)
        assert start and procs.process_alive(p.pid, start) is True
        assert procs.process_alive(p.pid, start + 1) is False  # same PID, another start: PID reuse
    finally:
        p.kill()
        p.wait()
    assert procs.process_alive(p.pid, start) is False


def test_a_zombie_is_not_alive():
    p = subprocess.Popen(["true"])

    def state():
        with open(f"/proc/{p.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    wait_until(lambda: state() == "Z", timeout=10)  # exited, not yet reaped
    assert procs.process_alive(p.pid, procs.start_time(p.pid) or 1) is False
    p.wait()


def test_no_pid_is_alive_outside_the_range_of_pids():
    for pid in (0, -1, (1 << 22) + 1, 10**30):
        assert procs.process_alive(pid, 1) is False


def test_without_a_usable_proc_a_live_pid_cannot_tell_and_a_gone_one_is_dead(monkeypatch):
    """No /proc (or one mounted for another PID namespace): the kernel still says whether the pid
    exists, but not whether it is still the same process: then the lease decides."""
    monkeypatch.setattr(procs, "_proc_is_ours", lambda: False)
    assert procs.start_time(os.getpid()) == 0
    assert procs.process_alive(os.getpid(), 12345) is None
    p = subprocess.Popen(["true"])
    p.wait()
    assert procs.process_alive(p.pid, 12345) is False


@pytest.mark.parametrize("kill_error, expected", [(errno.EPERM, None), (errno.ESRCH, False)])
def test_a_process_that_proc_hides_is_not_taken_for_dead(monkeypatch, kill_error, expected):
    """hidepid=2, systemd ProtectProc: /proc/PID is missing for another user's process. kill(pid, 0)
    then tells: EPERM, it exists (cannot tell: the lease decides); ESRCH, it is gone."""

    def hidden(pid):
        raise FileNotFoundError(errno.ENOENT, "hidden", f"/proc/{pid}/stat")

    def kill(pid, sig):
        raise OSError(kill_error, os.strerror(kill_error))

    monkeypatch.setattr(procs, "_stat", hidden)
    monkeypatch.setattr(procs.os, "kill", kill)
    assert procs.process_alive(4242, 1) is expected


def test_worker_ids_round_trip():
    wid = procs.worker_id()
    w = procs.split_worker_id(wid)
    assert w == (procs.hostname(), os.getpid(), procs.start_time(os.getpid()), procs.namespace())
    assert wid == f"{w.host}.{w.pid}.{w.start}.n{w.ns}"
    assert procs.here(wid) and procs.liveness(wid) is True
    assert procs.split_worker_id("old.example.12.345") == ("old.example", 12, 345, None)  # an old id: namespace unknown
    with pytest.raises(ValueError):
        procs.split_worker_id("host.12")


def test_the_host_name_is_no_identity():
    """A worker started under another host name (the host was renamed) is still this namespace's,
    and its pid decides; a worker with this host name in another namespace is not."""
    renamed = me(host="before-the-rename")
    assert procs.here(renamed) and procs.liveness(renamed) is True
    assert procs.liveness(me(start=procs.start_time(os.getpid()) + 1, host="before-the-rename")) is False
    twin = me(ns=OTHER_NS)  # same host name, same pid and start, another container
    assert not procs.here(twin) and procs.liveness(twin) is None
    old = f"{procs.hostname()}.{os.getpid()}.{procs.start_time(os.getpid())}"  # an old id naming this very process
    assert not procs.here(old) and procs.liveness(old) is None


class FakeSpool:
    def __init__(self, beats):
        self.beats = beats

    def heartbeat_mtime(self, wid):
        return self.beats.get(wid)


def test_holder_is_dead_by_pid_here_and_by_lease_elsewhere():
    now, lease = 1_000_000.0, 30
    p = subprocess.Popen(["true"])
    p.wait()
    gone = me(pid=p.pid, start=1)
    alive_stale = me(host="renamed")  # this process: alive whatever its heartbeat says
    twin = me(ns=OTHER_NS)
    old = f"{procs.hostname()}.{os.getpid()}.{procs.start_time(os.getpid())}"
    spool = FakeSpool({gone: now, alive_stale: now - 10 * lease, twin: now - lease + 1, old: now - lease - 1})
    assert holder_is_dead(spool, gone, now, lease)  # its pid is gone: a fresh heartbeat does not help
    assert not holder_is_dead(spool, alive_stale, now, lease)
    assert not holder_is_dead(spool, twin, now, lease)  # another namespace: heartbeat within the lease
    assert holder_is_dead(spool, twin, now + 2, lease)  # ... and past it
    assert holder_is_dead(spool, old, now, lease)  # an old id: the lease, never this host's pids
    assert not holder_is_dead(spool, old, now, lease, claimed_at=now - 1)  # a claim younger than the lease
    assert holder_is_dead(FakeSpool({}), me(ns=OTHER_NS), now, lease)  # no heartbeat, no claim time
    assert holder_is_dead(spool, "not a worker id", now, lease)


def test_a_hidden_holder_is_judged_by_its_lease(monkeypatch):
    now, lease = 1_000_000.0, 30
    wid = me(pid=4242, start=777)

    def hidden(pid):
        raise FileNotFoundError(errno.ENOENT, "hidden")

    def kill(pid, sig):
        raise PermissionError(errno.EPERM, "not permitted")

    monkeypatch.setattr(procs, "_stat", hidden)
    monkeypatch.setattr(procs.os, "kill", kill)
    assert not holder_is_dead(FakeSpool({wid: now - lease + 1}), wid, now, lease)
    assert holder_is_dead(FakeSpool({wid: now - lease - 1}), wid, now, lease)
