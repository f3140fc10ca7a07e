"""Issue 8, "Stuck": a job must not be able to stop the pool, and stopping is prompt and bounded.

Real `queuectl` subprocesses and real worker processes. Every wait is a condition with a deadline.
"""

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time

import pytest

from conftest import QUEUECTL, wait_until

q = shlex.quote
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def stays(cond, seconds, message):
    """COND holds during the whole window (the negative counterpart of wait_until)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert cond(), message
        time.sleep(0.01)
    assert cond(), message


def heartbeat(spool, wid):
    try:
        with open(spool.path("workers", wid + ".json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def start_pool(spool, tmp_path, *args, count=1, stderr=None):
    """A foreground pool; its stderr goes to a file unless STDERR is given."""
    log = open(tmp_path / f"pool-{time.monotonic_ns()}.log", "w+")
    p = subprocess.Popen(
        [QUEUECTL, "worker", "start", "--count", str(count), *args],
        env=spool.env,
        stdout=subprocess.DEVNULL,
        stderr=log if stderr is None else stderr,
    )
    p.log = log
    spool.procs.append(p)
    wait_until(lambda: len(spool.live_workers()) >= count or p.poll() is not None, timeout=20)
    assert p.poll() is None
    return p


def pool_log(p):
    p.log.seek(0)
    return p.log.read()


def blocking_job(tmp_path, name):
    """A command that records its pid, then waits until tmp_path/NAME.release exists."""
    started, release = tmp_path / f"{name}.pid", tmp_path / f"{name}.release"
    cmd = (
        f"echo $$ > {q(str(started))}.tmp && mv {q(str(started))}.tmp {q(str(started))}; "
        f"while [ ! -e {q(str(release))} ]; do sleep 0.02; done"
    )
    return cmd, started, release


def job_pid(started):
    wait_until(started.exists, timeout=10, message=f"job never started ({started})")
    return int(started.read_text())


def holder_of(spool, job_id):
    return wait_until(lambda: next((w for w in spool.live_workers() if w["job"] == job_id), None), timeout=10)


# -- 1. a job cannot stop its worker, nor the pool ---------------------------------------------


def test_a_job_that_signals_its_worker_cannot_stop_the_pool(spool, tmp_path):
    pool = start_pool(spool, tmp_path, count=2)
    pids = sorted(w["pid"] for w in spool.live_workers())
    # each asks its worker to stop twice (with a pause, so that the two are not merged): the
    # shell's own kill, kill(1) (a process gone before the worker can look at it), a subshell
    senders = {
        "builtin": "kill -TERM $PPID; sleep 0.1; kill -INT $PPID; sleep 0.1",
        "external": "/usr/bin/env kill -TERM $PPID; sleep 0.1; /usr/bin/env kill -TERM $PPID; sleep 0.1",
        "subshell": "(kill -TERM $PPID); sleep 0.1; (sleep 0.05; kill -TERM $PPID) & wait; sleep 0.1",
    }
    for name, cmd in senders.items():
        for i in range(3):
            spool.enqueue({"id": f"{name}-{i}", "command": cmd, "max_retries": 0})
    spool.enqueue({"id": "plain", "command": "true"})
    spool.wait_counts(timeout=30, completed=10, processing=0, pending=0)
    assert pool.poll() is None, pool_log(pool)
    assert sorted(w["pid"] for w in spool.live_workers()) == pids, pool_log(pool)  # the same workers, none lost
    for name in senders:
        for i in range(3):
            job = spool.show(f"{name}-{i}")
            assert (job["state"], job["attempts"]) == ("completed", 1), job
            notes = job["history"][0].get("notes") or []
            assert any("ignored" in n and "SIG" in n for n in notes), job
    log = pool_log(pool)
    assert "a job cannot stop its worker" in log, log
    assert "stopped and put back" not in log


def test_a_job_that_signals_the_supervisor_or_the_other_workers_cannot_stop_the_pool(spool, tmp_path):
    pool = start_pool(spool, tmp_path, count=2)
    pids = sorted(w["pid"] for w in spool.live_workers())
    sup = "sup=$(ps -o ppid= -p $PPID); kill -TERM $sup; sleep 0.1; kill -TERM $sup; sleep 0.1"
    # every worker of the spool, by the pid in its heartbeat's name (host.pid.start.nNS.json)
    each = 'for f in "$QUEUECTL_SPOOL"/workers/*.json; do p=${f%.*.*.json}; kill -TERM ${p##*.}; done'
    for i in range(2):
        spool.enqueue({"id": f"sup-{i}", "command": sup, "max_retries": 0})
        spool.enqueue({"id": f"all-{i}", "command": f"{each}; sleep 0.1; {each}; sleep 0.1", "max_retries": 0})
    spool.wait_counts(timeout=30, completed=4, processing=0, pending=0)
    assert pool.poll() is None, pool_log(pool)
    assert sorted(w["pid"] for w in spool.live_workers()) == pids
    # the pool still stops when asked from outside
    pool.send_signal(signal.SIGTERM)
    pool.wait(timeout=20)
    assert spool.live_workers() == []
    log = pool_log(pool)
    assert "(a process of the pool) ignored: a job cannot stop the pool" in log, log  # the supervisor
    assert "(a process of the pool) ignored: a job cannot stop its worker" in log, log  # the other worker


def test_a_job_that_sigkills_its_worker_every_time_ends_in_dead(spool, tmp_path):
    for key, value in (("heartbeat-seconds", "0.2"), ("lease-seconds", "1"), ("backoff-max", "0")):
        spool.run("config", "set", key, value, check=0)
    runs = tmp_path / "runs"
    pool = start_pool(spool, tmp_path, count=2)
    jid = spool.enqueue({"id": "killer", "command": f"echo x >> {q(str(runs))}; kill -9 $PPID; sleep 30", "max_retries": 2})
    spool.wait_counts(timeout=60, dead=1, processing=0)
    job = spool.show(jid)
    assert job["attempts"] == 3 and [h["exit_code"] for h in job["history"]] == [None, None, None], job
    assert all(h["error"].startswith("worker lost") for h in job["history"]), job
    assert runs.read_text() == "x\n" * 3
    assert pool.poll() is None
    wait_until(lambda: len(spool.live_workers()) == 2, timeout=20, message="killed workers were not replaced")


# -- 2. a worker whose stderr nobody reads; worker stop --timeout ---------------------------------


def test_a_worker_whose_stderr_is_not_read_keeps_working_and_stops(spool, tmp_path):
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)  # one page: a few dozen log lines fill it
    try:
        pool = start_pool(spool, tmp_path, stderr=w)
    finally:
        os.close(w)
    try:
        # 500 log lines of about 250 bytes: more than the pipe and the worker's queue hold
        text = "".join(json.dumps({"id": f"j{i:03d}-" + "x" * 120, "command": "true"}) + "\n" for i in range(500))
        spool.run("enqueue", "-", input=text, check=0)
        spool.wait_counts(timeout=90, completed=500, processing=0)

        got = []

        def read():
            try:
                got.extend(iter(lambda: os.read(r, 65536), b""))
            except OSError:
                pass

        threading.Thread(target=read, daemon=True).start()  # someone reads again: the drops are noted
        spool.enqueue({"id": "after", "command": "true"})
        wait_until(lambda: b"job after attempt 1" in b"".join(got), timeout=20)
        log = b"".join(got).decode()
        assert re.search(r"worker \S+: \d+ log line\(s\) \(\d+ bytes\) dropped: stderr was not being read\n", log), log

        t0 = time.monotonic()
        p = spool.run("worker", "stop", "--timeout", "10", timeout=30)
        assert p.returncode == 0 and "1 worker(s) stopped" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 8
        pool.wait(timeout=10)
    finally:
        os.close(r)


def test_worker_stop_timeout_escalates_to_a_second_sigterm(spool, tmp_path):
    cmd, started, release = blocking_job(tmp_path, "long")
    pool = start_pool(spool, tmp_path, count=2)
    jid = spool.enqueue({"id": "long", "command": cmd})
    busy = holder_of(spool, jid)
    jpid = job_pid(started)
    t0 = time.monotonic()
    p = spool.run("worker", "stop", "--timeout", "1", timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    (escalated,) = [line for line in lines if "second SIGTERM" in line]
    assert f"pid {busy['pid']}" in escalated and "job long" in escalated and "user " in escalated, escalated
    assert not any("SIGKILL" in line for line in lines), (lines, pool_log(pool))
    assert 1 <= took < 8, took
    assert spool.live_workers() == [] and not alive(busy["pid"]) and not alive(jpid)
    job = spool.show(jid)
    assert (job["state"], job["attempts"]) == ("pending", 0)  # put back, not counted
    pool.wait(timeout=10)


def test_worker_stop_kills_a_worker_that_does_not_stop(spool, tmp_path):
    spool.run("config", "set", "backoff-max", "0", check=0)  # the lost attempt's retry is due at once
    cmd, started, release = blocking_job(tmp_path, "frozen")
    pool = start_pool(spool, tmp_path, count=2)
    jid = spool.enqueue({"id": "frozen", "command": cmd})
    busy = holder_of(spool, jid)
    jpid = job_pid(started)
    os.kill(busy["pid"], signal.SIGSTOP)  # a worker that cannot act on any signal
    try:
        t0 = time.monotonic()
        p = spool.run("worker", "stop", "--timeout", "0.5", "--kill-after", "1", timeout=60)
        took = time.monotonic() - t0
    finally:
        if alive(busy["pid"]):
            os.kill(busy["pid"], signal.SIGKILL)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    (second,) = [line for line in lines if "second SIGTERM" in line]
    (killed,) = [line for line in lines if "SIGKILL" in line]
    assert f"pid {busy['pid']}" in second and f"pid {busy['pid']}" in killed and "job frozen" in killed, lines
    assert took < 10, took
    assert not alive(busy["pid"])
    wait_until(lambda: not alive(jpid), timeout=5, message="the killed worker's job still runs")
    pool.wait(timeout=10)  # not replaced: the supervisor was told to stop
    assert "starting a replacement" not in pool_log(pool)
    assert spool.counts()["processing"] == 1  # stays claimed: recovery counts the attempt as lost
    release.touch()
    spool.run("worker", "start", "--burst", check=0)
    job = spool.show(jid)
    assert job["history"][0]["error"].startswith("worker lost") and job["state"] == "completed", job


def test_two_worker_stops_at_once_are_one_graceful_stop(spool, tmp_path):
    cmd, started, release = blocking_job(tmp_path, "both")
    pool = start_pool(spool, tmp_path)
    jid = spool.enqueue({"id": "both", "command": cmd})
    busy = holder_of(spool, jid)
    jpid = job_pid(started)
    stoppers = [
        subprocess.Popen([QUEUECTL, "worker", "stop"], env=spool.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        running = lambda: alive(jpid) and all(s.poll() is None for s in stoppers)  # noqa: E731
        stays(running, 1.5, "two stops at once stopped the job")  # time enough for both to signal
        # the worker took the request (SIGTERMs pending at once merge: it may list any of the senders)
        wait_until(lambda: heartbeat(spool, busy["id"]).get("stop_requested_by"), timeout=10)
        stays(running, 0.3, "two stops at once stopped the job")
        release.touch()
        for s in stoppers:
            out, err = s.communicate(timeout=20)
            assert s.returncode == 0 and "1 worker(s) stopped" in err, err
    finally:
        for s in stoppers:
            if s.poll() is None:
                s.kill()
    job = spool.show(jid)
    assert (job["state"], job["attempts"]) == ("completed", 1)
    pool.wait(timeout=10)


def test_worker_stop_timeout_takes_a_duration(spool):
    for bad in ("-1", "soon", "5x", ""):
        p = spool.run("worker", "stop", "--timeout", bad)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (bad, p.stderr)
    for good in ("0", "90", "1.5s", "2m", "1h"):
        p = spool.run("worker", "stop", "--timeout", good, check=0)
        assert "no workers running" in p.stderr


# -- 3. a stop request is prompt even when the disk is full -------------------------------------


def test_one_sigint_stops_a_worker_facing_a_full_disk(spool, tmp_path):
    from test_faults import Faults

    faults = Faults(tmp_path, spool.env)
    spool.run("config", "set", "backoff-max", "0", check=0)  # the lost attempt's retry is due at once
    pool = start_pool(spool, tmp_path)
    faults.set("ENOSPC write .write")  # every result the worker stages fails
    spool.enqueue({"id": "j", "command": "echo ran >> " + q(str(tmp_path / "runs"))})
    wait_until(lambda: len(faults.hits()) >= 2, timeout=20)
    assert spool.counts()["processing"] == 1
    t0 = time.monotonic()
    pool.send_signal(signal.SIGINT)  # one Ctrl-C
    try:
        pool.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("one SIGINT did not stop a worker facing a full disk:\n" + pool_log(pool))
    assert time.monotonic() - t0 < 8
    log = pool_log(pool)
    assert "job(s) j stay claimed in processing/" in log, log
    assert spool.counts()["processing"] == 1 and spool.live_workers() == []  # kept claimed, said so
    faults.clear()
    spool.run("worker", "start", "--burst", check=0)
    job = spool.show("j")
    assert job["state"] == "completed" and job["history"][0]["error"].startswith("worker lost"), job


def test_the_example_systemd_unit_gives_worker_stop_time_to_escalate():
    import configparser

    from queuectl.pool import KILL_AFTER

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "queuectl-worker.service"))
    service = unit["Service"]
    stop = service["ExecStop"]
    m = re.search(r"worker stop --timeout (\d+)s --kill-after (\d+)s", stop)
    assert m, stop
    assert int(service["TimeoutStopSec"]) >= int(m.group(1)) + int(m.group(2)) + 5
    assert service["KillMode"] == "mixed"
    assert KILL_AFTER == int(m.group(2))
