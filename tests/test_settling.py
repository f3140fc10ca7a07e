"""Issue 8: a finished result is made durable within a bound, whatever the worker does next, and
what a fault held back is taken up again once the fault clears."""

import time

from conftest import wait_until
from test_faults import Faults


def test_a_result_is_durable_while_the_next_long_job_runs(spool, tmp_path):
    """A result used to wait in processing/ until the next job ended (minutes, for a long job)."""
    go = tmp_path / "go"
    spool.enqueue({"id": "a-quick", "command": "true", "priority": 1})
    spool.enqueue({"id": "b-long", "command": f"while [ ! -e {go} ]; do sleep 0.05; done"})
    spool.start_workers(count=1)
    try:
        wait_until(lambda: spool.show("b-long")["state"] == "processing", timeout=20)
        t0 = time.monotonic()
        wait_until(lambda: spool.show("a-quick")["state"] == "completed", timeout=5,
                   message="the quick job's result waited for the long job")
        assert time.monotonic() - t0 < 2.0  # a bound of SETTLE_DELAY and a commit, not the long job's run
        assert "a-quick.json" in spool.ls("done")
        assert spool.show("b-long")["state"] == "processing"
    finally:
        go.touch()
    spool.wait_counts(completed=2)


def test_a_drop_in_that_arrives_during_a_fault_is_adopted_once_it_clears(spool, tmp_path):
    """It stayed as its worker's own `.adopt` claim until that worker exited."""
    faults = Faults(tmp_path, spool.env)
    spool.run("config", "set", "heartbeat-seconds", "0.2", check=0)  # recovery passes come often
    spool.start_workers(count=1)
    faults.set("ENOSPC rename /pending/2")  # the worker cannot publish the adopted job (TIME_ID.json)
    spool.drop_in("late.json", {"command": "true"})  # this (test) process is not faulted
    wait_until(lambda: faults.hits(), timeout=20, message="the adoption never met the fault")
    faults.clear()
    spool.wait_counts(completed=1, timeout=20)
    job = spool.show("late")
    assert job["attempts"] == 1 and job["state"] == "completed"
    assert spool.ls("processing") == [] and spool.ls("rejected") == []


def test_output_lost_to_a_full_disk_is_not_recorded_as_a_log(spool, tmp_path):
    faults = Faults(tmp_path, spool.env)
    faults.set("ENOSPC open /logs/")  # the log cannot even be created
    spool.enqueue({"id": "chatty", "command": "echo hello"})
    spool.run("worker", "start", "--burst", check=0)
    job = spool.show("chatty")
    assert job["state"] == "completed" and job["attempts"] == 1
    assert job["history"][0]["log"] is None, job["history"][0]  # nothing was kept: no log to point at
    assert spool.ls("logs") == []


def test_a_job_that_exits_0_while_the_disk_is_full_ends_completed_once_space_returns(spool, tmp_path):
    faults = Faults(tmp_path, spool.env)
    started = tmp_path / "started"
    spool.enqueue({"id": "ok", "command": f"touch {started}; sleep 0.3"})
    spool.start_workers(count=1)
    wait_until(started.exists, timeout=20)
    faults.set("ENOSPC write /tmp/qc-", "ENOSPC open /tmp/qc-")  # its result cannot be staged
    wait_until(lambda: faults.hits(), timeout=20, message="the result never met the full disk")
    assert spool.show("ok")["state"] == "processing"  # kept claimed meanwhile, not lost
    faults.clear()
    spool.wait_counts(completed=1, timeout=20)
    job = spool.show("ok")
    assert job["attempts"] == 1 and job["last_error"] is None and [h["error"] for h in job["history"]] == [None]


def test_a_log_whose_every_write_failed_is_not_recorded(spool, tmp_path):
    faults = Faults(tmp_path, spool.env)
    faults.set("ENOSPC write /logs/")  # the log is created, but nothing can be written to it
    spool.enqueue({"id": "chatty", "command": "echo hello"})
    spool.run("worker", "start", "--burst", check=0)
    job = spool.show("chatty")
    assert job["state"] == "completed" and job["history"][0]["log"] is None, job["history"][0]
