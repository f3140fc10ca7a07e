"""Faults from the system: full disk, read-only spool, unwritable logs/, vanished spool, EMFILE.

Real faults where this machine allows them (a small tmpfs, read-only mounts: needs root), else
injected through tests/faults/sitecustomize.py. Every test checks the promise of issue 3: `enqueue`
exits 1 with one line and leaves nothing half-written; a worker keeps the job, logs one line per
distinct error, does not spin, and resumes by itself once the fault is gone.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import QUEUECTL, wait_until

FAULTS_DIR = os.path.join(os.path.dirname(__file__), "faults")


def _can_mount():
    if os.geteuid() != 0:
        return False
    probe = f"/tmp/queuectl-mount-probe-{os.getpid()}"
    os.makedirs(probe, exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], capture_output=True)
        return ok
    finally:
        os.rmdir(probe)


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="needs root and mount(8) for a real tmpfs")


class Faults:
    """Toggle injected faults for every queuectl process started with `env`."""

    def __init__(self, tmp_path, env):
        self.rules = str(tmp_path / "fault-rules")
        env["PYTHONPATH"] = FAULTS_DIR + os.pathsep + env.get("PYTHONPATH", "")
        env["QUEUECTL_FAULTS"] = self.rules

    def set(self, *rules):
        with open(self.rules + ".new", "w") as f:
            f.write("".join(r + "\n" for r in rules))
        os.replace(self.rules + ".new", self.rules)

    def clear(self):
        self.set()

    def hits(self):
        try:
            with open(self.rules + ".hits") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def faults(spool, tmp_path):
    return Faults(tmp_path, spool.env)


def start_pool(spool, tmp_path, *args, count=1):
    """A foreground pool whose stderr goes to a file (a pipe could fill up and block it)."""
    log = open(tmp_path / f"pool-{time.monotonic_ns()}.log", "w+")
    p = subprocess.Popen([QUEUECTL, "worker", "start", "--count", str(count), *args], env=spool.env, stdout=subprocess.DEVNULL, stderr=log)
    p.log = log
    spool.procs.append(p)
    wait_until(lambda: len(spool.live_workers()) >= count or p.poll() is not None, timeout=20)
    assert p.poll() is None
    return p


def pool_log(p):
    p.log.seek(0)
    return p.log.read()


def stop_pool(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return pool_log(p)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(spool):
    return [w["pid"] for w in spool.live_workers()]


def assert_not_spinning(pids, seconds=1.5, limit=0.3):
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(seconds)  # measuring CPU use over a window: the one place a test must let time pass
    for pid in pids:
        used = cpu_seconds(pid) - before[pid]
        assert used < limit, f"worker {pid} used {used:.2f} s of CPU in {seconds} s while facing a fault"


def error_lines(text, needle):
    return [line for line in text.splitlines() if needle in line]


def test_enqueue_on_a_full_disk_exits_1_with_one_line_and_stores_nothing(spool, faults):
    faults.set("ENOSPC write /tmp/qc-")
    p = spool.run("enqueue", json.dumps({"id": "a", "command": "true"}))
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and "No space left on device" in p.stderr
    assert spool.ls("pending") == spool.ls("tmp") == spool.ls("ids") == []
    assert faults.hits()
    p = spool.run("enqueue", "-", input='{"id": "b", "command": "true"}\n{"id": "c", "command": "true"}\n')
    assert p.returncode == 1 and p.stdout == "" and len(p.stderr.splitlines()) == 1
    faults.clear()
    assert spool.enqueue({"id": "a", "command": "true"}) == "a"  # the id was given back
    assert len(spool.ls("pending")) == 1 and spool.ls("tmp") == []


def test_enqueue_when_the_rename_fails_gives_the_id_back(spool, faults):
    faults.set("EROFS rename /pending/")
    p = spool.run("enqueue", json.dumps({"id": "a", "command": "true"}))
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "Read-only" in p.stderr
    assert spool.ls("pending") == spool.ls("tmp") == spool.ls("ids") == []


@needs_mount
def test_real_full_disk_and_read_only_spool(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        env = dict(os.environ, QUEUECTL_SPOOL=str(mnt / "spool"))

        def q(*args):
            return subprocess.run([QUEUECTL, *args], env=env, capture_output=True, text=True, timeout=30)

        assert q("init").returncode == 0
        assert q("enqueue", '{"id": "first", "command": "true"}').returncode == 0
        with open(mnt / "filler", "wb", buffering=0) as f:  # fill the disk
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        p = q("enqueue", json.dumps({"id": "big", "command": "x" * 100000}))
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
        assert "No space left" in p.stderr
        assert sorted(os.listdir(mnt / "spool" / "pending"))[0].endswith("_first.json")
        assert len(os.listdir(mnt / "spool" / "pending")) == 1 and os.listdir(mnt / "spool" / "tmp") == []
        os.unlink(mnt / "filler")
        assert q("enqueue", json.dumps({"id": "big", "command": "x" * 100000})).returncode == 0

        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        p = q("enqueue", '{"id": "ro", "command": "true"}')
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "Read-only" in p.stderr, p.stderr
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        assert q("enqueue", '{"id": "ro", "command": "true"}').returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@needs_mount
def test_worker_facing_a_read_only_spool_waits_quietly_and_resumes(tmp_path):
    from conftest import Spool

    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    s = Spool(mnt / "spool")
    try:
        s.run("init", check=0)
        s.run("config", "set", "heartbeat-seconds", "0.2", check=0)
        pool = start_pool(s, tmp_path)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        s.drop_in_fails = True
        assert_not_spinning(worker_pids(s))
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        s.enqueue({"id": "after", "command": "echo resumed"})
        s.wait_counts(completed=1)
        log = stop_pool(pool)
        assert len(error_lines(log, "Read-only file system")) <= 2, log  # heartbeat and recovery, once each
        assert s.run("logs", "after", check=0).stdout == "resumed\n"
    finally:
        s.stop_all()
        subprocess.run(["umount", "-l", str(mnt)])


def test_worker_keeps_the_result_while_the_disk_is_full_then_commits_it(spool, faults, tmp_path):
    pool = start_pool(spool, tmp_path)
    faults.set("ENOSPC write .write")  # every result the committer stages fails (not enqueues)
    spool.enqueue({"id": "j", "command": "echo ran >> " + str(tmp_path / "runs")})
    wait_until(lambda: len(faults.hits()) >= 2, timeout=20)
    assert spool.counts()["processing"] == 1  # still claimed: not lost, not run again
    assert_not_spinning(worker_pids(spool))
    faults.clear()
    spool.wait_counts(completed=1, processing=0)
    assert open(tmp_path / "runs").read() == "ran\n"
    log = stop_pool(pool)
    assert len(error_lines(log, "No space left on device")) == 1, log
    assert spool.ls("tmp") == []


@needs_mount
def test_unwritable_logs_folder_keeps_the_job_pending_until_it_is_writable(spool, tmp_path):
    logs = spool.path("logs")
    subprocess.run(["mount", "--bind", logs, logs], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", logs], check=True)
        pool = start_pool(spool, tmp_path)
        spool.enqueue({"id": "j", "command": "echo out"})
        wait_until(lambda: "cannot write the log of job j" in pool_log(pool), timeout=20)
        assert spool.counts()["pending"] == 1 and spool.counts()["completed"] == 0
        assert_not_spinning(worker_pids(spool))
        # writable again: the same mount, as the workers hold logs/ open (a directory handle keeps
        # the folder they started with; a folder mounted over later is not seen until a restart)
        subprocess.run(["mount", "-o", "remount,rw,bind", logs], check=True)
        spool.wait_counts(completed=1, timeout=60)
    finally:
        subprocess.run(["umount", "-l", logs], check=True)
    spool.wait_counts(completed=1, timeout=60)
    assert spool.run("logs", "j", check=0).stdout == "out\n"
    log = stop_pool(pool)
    assert len(error_lines(log, "cannot write the log of job j")) == 1, log


def test_emfile_at_spawn_releases_the_job_and_resumes(spool, faults, tmp_path):
    pool = start_pool(spool, tmp_path)
    faults.set("EMFILE pipe")
    spool.enqueue({"id": "j", "command": "true"})
    wait_until(lambda: "Too many open files" in pool_log(pool), timeout=20)
    assert spool.show("j")["attempts"] == 0
    assert_not_spinning(worker_pids(spool))
    faults.clear()
    spool.wait_counts(completed=1, timeout=60)
    assert spool.show("j")["attempts"] == 1
    log = stop_pool(pool)
    assert len(error_lines(log, "Too many open files")) == 1, log


def test_vanished_spool_is_noticed_and_work_resumes_when_it_is_back(spool, tmp_path):
    import shutil

    spool.run("config", "set", "heartbeat-seconds", "0.2", check=0)
    pool = start_pool(spool, tmp_path)
    pids = worker_pids(spool)
    shutil.rmtree(spool.root)
    wait_until(lambda: "cannot find the spool's pending/ folder" in pool_log(pool), timeout=20)
    assert_not_spinning(pids)
    spool.run("init", check=0)
    spool.run("config", "set", "heartbeat-seconds", "0.2", check=0)
    wait_until(lambda: "pending/ is back" in pool_log(pool), timeout=20)
    spool.enqueue({"id": "after", "command": "true"})
    spool.wait_counts(completed=1)
    log = stop_pool(pool)
    assert len(error_lines(log, "cannot find the spool's pending/ folder")) == 1, log


def test_job_output_is_capped_and_the_job_is_unaffected(spool):
    spool.run("config", "set", "max-log-bytes", "100000", check=0)
    spool.enqueue({"id": "big", "command": "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo done-marker >&2; exit 7"})
    spool.run("worker", "start", "--burst", check=0)
    job = spool.show("big")
    assert job["exit_code"] == 7  # the job ran to its own end, unaware of the cap
    size = os.path.getsize(spool.path("logs", "big.1.log"))
    assert 100000 <= size < 100200
    tail = open(spool.path("logs", "big.1.log"), "rb").read()[-120:].decode()
    assert "more bytes of output dropped: over max-log-bytes=100000" in tail
