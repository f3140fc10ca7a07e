"""Issue 8, clocks: every duration is measured on the monotonic clock, and the age of another
host's heartbeat on the spool's file-system clock, so that a clock step or a host whose clock is
wrong cannot kill a job early or take over a healthy one (spool_layout.md, "Clocks")."""

import json
import os
import time

from conftest import wait_until
from queuectl import layout
from queuectl.recovery import Recovery
from queuectl.settings import Watched, set_value
from queuectl.spool import Spool
from queuectl.timeutil import parse_iso
from test_faults import FAULTS_DIR


def step_clock(spool, tmp_path):
    """Give every queuectl process of SPOOL a wall clock that the test can step; returns a
    function that sets the offset in seconds."""
    path = str(tmp_path / "clock-offset")
    spool.env["PYTHONPATH"] = FAULTS_DIR + os.pathsep + spool.env.get("PYTHONPATH", "")
    spool.env["QUEUECTL_CLOCK_OFFSET"] = path

    def set_offset(seconds):
        with open(path + ".new", "w") as f:
            f.write(str(seconds))
        os.replace(path + ".new", path)

    return set_offset


def test_a_clock_step_does_not_time_a_job_out(spool, tmp_path):
    set_offset = step_clock(spool, tmp_path)
    started, go = tmp_path / "started", tmp_path / "go"
    spool.run("config", "set", "heartbeat-seconds", "0.2", check=0)  # the worker wakes often
    spool.enqueue({"id": "long", "command": f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done", "timeout": 600})
    spool.start_workers()
    wait_until(started.exists, timeout=20)
    set_offset(3600)  # the system clock jumps an hour ahead while the job runs
    seen = set()

    def ticked_on_the_new_clock():  # the worker's heartbeats, dated by its stepped clock
        for name in spool.ls("workers"):
            try:
                with open(spool.path("workers", name)) as f:
                    beat = json.load(f)["heartbeat_at"]
            except (OSError, ValueError, KeyError):
                continue
            if parse_iso(beat) > time.time() + 3000:
                seen.add(beat)
        return len(seen) >= 5

    wait_until(ticked_on_the_new_clock, timeout=10, message="the worker never ticked on the stepped clock")
    # a deadline on the wall clock would have fired at the first of those ticks
    assert spool.counts()["processing"] == 1, spool.show("long")
    go.touch()
    spool.wait_counts(completed=1)
    job = spool.show("long")
    assert job["attempts"] == 1 and job["last_error"] is None and job["exit_code"] == 0


def test_a_host_whose_clock_runs_ahead_does_not_take_over_a_healthy_job(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    set_value(spool.config_path, "lease-seconds", "30")
    from queuectl import job as jobdoc

    spool.enqueue([jobdoc.accept({"id": "j1", "command": "true"}, time.time(), 3)])
    (name,) = spool.listdir("pending")
    holder = "otherhost.4242.17"  # a worker on another host: judged by its heartbeat's age
    claim = layout.claim_name("run", name, holder)
    os.rename(os.path.join(spool.root, "pending", name), os.path.join(spool.root, "processing", claim))
    with open(os.path.join(spool.root, "workers", layout.heartbeat_name(holder)), "w") as f:
        f.write("{}")  # its heartbeat, just written by the spool's clock
    with open(os.path.join(spool.root, "workers", layout.heartbeat_name(spool.wid)), "w") as f:
        f.write("{}")  # ours (recovery measures ages against it)

    lines = []
    Recovery(spool, Watched(spool.config_path), lines.append).run(time.time() + 60)  # our clock: 60 s ahead

    assert spool.listdir("processing") == [claim], lines
    assert spool.listdir("pending") == []

    # once its heartbeat and its claim are older than the lease on the spool's clock: recovered
    set_value(spool.config_path, "heartbeat-seconds", "0.2")
    set_value(spool.config_path, "lease-seconds", "1")
    past = time.time() - 31
    os.utime(os.path.join(spool.root, "workers", layout.heartbeat_name(holder)), (past, past))

    def recovered():
        Recovery(spool, Watched(spool.config_path), lines.append).run(time.time())
        return spool.listdir("processing") == [] and len(spool.listdir("pending")) == 1

    wait_until(recovered, timeout=10, interval=0.1)  # the claim's ctime (its rename) ages past 1 s
