"""Issue 10: `queuectl hold`, `release` and `retry` end to end, with real workers through the
installed CLI. A held job waits in held/, never claimed; release makes it pending again keeping
its attempts and its not-before time; retry makes a waiting job due now and revives a dead one."""

import json
import os
import re

from conftest import wait_until

PENDING = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)_(.+)\.json\Z")


def held(spool):
    return [PENDING.match(n).group(2) for n in spool.ls("held")]


def pending_time(spool, job_id):
    (t,) = [PENDING.match(n).group(1) for n in spool.ls("pending") if PENDING.match(n).group(2) == job_id]
    return t


def test_hold_a_pending_job_is_never_claimed_until_released(spool):
    spool.enqueue({"id": "h1", "command": "true"})
    assert spool.run("hold", "h1", check=0).stdout == "h1: held\n"
    assert held(spool) == ["h1"] and spool.ls("pending") == []
    assert spool.counts()["held"] == 1
    assert [j["id"] for j in spool.json("list", "--state", "held", "--json")] == ["h1"]
    shown = spool.show("h1")
    assert (shown["state"], shown["attempts"]) == ("held", 0)
    spool.run("worker", "start", "--burst", check=0)
    assert held(spool) == ["h1"] and spool.ls("done") == []  # never claimed
    assert spool.run("hold", "h1", check=0).stdout == "h1: held already\n"
    assert spool.run("release", "h1", check=0).stdout == "h1: released\n"
    assert spool.ls("held") == []
    spool.run("worker", "start", "--burst", check=0)
    assert spool.ls("done") == ["h1.json"]


def test_release_keeps_attempts_and_not_before(spool):
    spool.run("config", "set", "backoff-base", "1000", check=0)
    spool.enqueue({"id": "f", "command": "exit 2", "max_retries": 5})
    spool.run("worker", "start", "--burst", check=0)
    before = pending_time(spool, "f")
    spool.run("hold", "f", check=0)
    assert spool.show("f")["state"] == "held"
    spool.run("release", "f", check=0)
    assert pending_time(spool, "f") == before  # its back-off kept
    job = spool.show("f")
    assert (job["state"], job["attempts"]) == ("failed", 1)


def test_release_of_a_job_that_is_not_held_is_refused(spool):
    spool.enqueue({"id": "n", "command": "true"})
    p = spool.run("release", "n", "nosuch", check=1)
    assert p.stderr.splitlines() == ["queuectl: job 'n' is not held (it is pending)", "queuectl: no job with id 'nosuch'"]


def test_hold_of_a_completed_job_is_refused(spool):
    spool.enqueue({"id": "d", "command": "true"})
    spool.run("worker", "start", "--burst", check=0)
    p = spool.run("hold", "d", check=1)
    assert p.stderr == "queuectl: job 'd' is completed: nothing to hold\n"
    assert spool.ls("done") == ["d.json"]


def test_hold_a_running_job_takes_effect_when_its_attempt_ends(spool, tmp_path):
    """Held while running: the attempt runs to its end; as it failed with retries left, the job
    goes to held/ instead of pending/, its attempt counted; release lets it run again."""
    go, started, marks = tmp_path / "go", tmp_path / "started", tmp_path / "marks"
    cmd = f"echo run >> {marks}; touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; test -e {tmp_path}/ok"
    spool.run("config", "set", "backoff-max", "0", check=0)  # a retry would be due at once
    spool.enqueue({"id": "r", "command": cmd, "max_retries": 3})
    spool.start_workers()
    wait_until(started.exists, timeout=20, message="the job never started")
    p = spool.run("hold", "r", check=0)
    assert p.stdout.startswith("r: running on worker ") and p.stdout.endswith("held when its attempt ends, unless it completes or dies\n")
    assert spool.ls("requests") == ["r.hold"]
    go.touch()
    wait_until(lambda: held(spool) == ["r"], timeout=20, message="the failed attempt did not go to held/")
    job = spool.show("r")
    assert (job["state"], job["attempts"], job["last_error"]) == ("held", 1, "exited with status 1")
    wait_until(lambda: spool.ls("requests") == [], timeout=5, message="the answered request stayed")
    assert open(marks).read() == "run\n"  # not run again while held
    (tmp_path / "ok").touch()
    spool.run("release", "r", check=0)
    wait_until(lambda: spool.ls("done") == ["r.json"], timeout=20, message="the released job never ran")
    assert spool.show("r")["attempts"] == 2


def test_hold_a_running_job_that_completes_leaves_it_completed(spool, tmp_path):
    go, started = tmp_path / "go", tmp_path / "started"
    spool.enqueue({"id": "c", "command": f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done"})
    spool.start_workers()
    wait_until(started.exists, timeout=20, message="the job never started")
    spool.run("hold", "c", check=0)
    go.touch()
    wait_until(lambda: spool.ls("done") == ["c.json"], timeout=20, message="the job did not complete")
    wait_until(lambda: spool.ls("requests") == [], timeout=5, message="the request stayed")
    assert spool.ls("held") == []


def test_release_withdraws_the_hold_of_a_running_job(spool, tmp_path):
    go, started = tmp_path / "go", tmp_path / "started"
    spool.run("config", "set", "backoff-max", "0", check=0)
    spool.enqueue({"id": "w", "command": f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; [ -e {tmp_path}/second ] || {{ touch {tmp_path}/second; exit 1; }}", "max_retries": 3})
    spool.start_workers()
    wait_until(started.exists, timeout=20, message="the job never started")
    spool.run("hold", "w", check=0)
    assert spool.run("release", "w", check=0).stdout == "w: hold request withdrawn\n"
    assert spool.ls("requests") == []
    go.touch()
    wait_until(lambda: spool.ls("done") == ["w.json"], timeout=20, message="the job was not retried")
    assert spool.show("w")["attempts"] == 2


def test_retry_a_failed_job_runs_it_now_keeping_its_attempts(spool):
    spool.run("config", "set", "backoff-base", "1000", check=0)  # its retry would be 1000 s away
    flag = spool.path("ok-flag")
    spool.enqueue({"id": "f", "command": f"test -e {flag}", "max_retries": 3})
    spool.run("worker", "start", "--burst", check=0)
    assert spool.show("f")["state"] == "failed"
    open(flag, "w").close()
    spool.run("worker", "start", "--burst", check=0)
    assert spool.ls("done") == []  # not due yet
    out = spool.json("retry", "--json", "f")
    assert out == [{"id": "f", "ok": True, "state": "failed", "note": "due now"}]
    spool.run("worker", "start", "--burst", check=0)
    job = spool.show("f")
    assert (job["state"], job["attempts"]) == ("completed", 2)


def test_retry_a_dead_job_behaves_as_dlq_retry(spool):
    spool.enqueue({"id": "d", "command": "exit 1", "max_retries": 0})
    spool.run("worker", "start", "--burst", check=0)
    assert spool.ls("dead") == ["d.json"]
    assert spool.run("retry", "d", check=0).stdout == "d: revived from dead/ with attempts 0\n"
    job = spool.show("d")
    assert (job["state"], job["attempts"], job["history"]) == ("pending", 0, [])
    assert [r["attempts"] for r in job["previous_runs"]] == [1]


def test_retry_a_held_job_releases_it_due_now(spool):
    spool.enqueue({"id": "h", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    spool.run("hold", "h", check=0)
    assert spool.run("retry", "h", check=0).stdout == "h: due now (released from hold)\n"
    spool.run("worker", "start", "--burst", check=0)
    assert spool.ls("done") == ["h.json"]


def test_retry_of_completed_and_running_jobs_is_refused(spool, tmp_path):
    spool.enqueue({"id": "ok", "command": "true"})
    spool.run("worker", "start", "--burst", check=0)
    started = tmp_path / "started"
    spool.enqueue({"id": "run", "command": f"touch {started}; sleep 30"})
    spool.start_workers()
    wait_until(started.exists, timeout=20, message="the job never started")
    p = spool.run("retry", "ok", "run", check=1)
    assert p.stderr.splitlines() == ["queuectl: job 'ok' is completed: nothing to retry", "queuectl: job 'run' is running: nothing to retry now"]
    spool.run("cancel", "run", check=0)


def test_every_job_command_has_an_example_in_its_help(spool):
    for cmd in ("cancel", "hold", "release", "retry"):
        out = spool.run(cmd, "--help", check=0).stdout
        assert "Example:" in out and f"queuectl {cmd} " in out, out


def test_a_hold_that_races_the_commit_of_a_retry(tmp_path):
    """hold finds the job running and writes its request, but the worker had recorded the end of
    the attempt just before and commits the retry to pending/: hold finds it there, holds it
    itself, and removes its request."""
    import time

    from queuectl import jobctl, policy
    from queuectl import job as jobdoc
    from queuectl.spool import Spool

    spool = Spool(str(tmp_path / "spool")).ensure()
    spool.enqueue([jobdoc.accept({"id": "race", "command": "false", "max_retries": 3}, time.time(), 3)])
    (name,) = spool.listdir("pending")
    claim = spool.take("run", name)
    committed = []

    class Racing(Spool):
        def request(self, job_id, kind, data):
            if not committed:  # the worker's commit of the retry lands just before the request
                t = time.time()
                job, nb = policy.record_attempt(spool.read_claim(claim), started=t, finished=t, exit_code=1, error=None,
                                                worker=spool.wid, log=None, base=2, maximum=0)
                committed.append(spool.finish(claim, job, nb))
            return super().request(job_id, kind, data)

    result = jobctl.hold(Racing(spool.root), "race", time.time())
    assert committed and committed[0][0] == "pending"
    assert (result.state, result.note) == ("held", "held")
    assert [n.endswith("_race.json") for n in spool.listdir("held")] == [True]
    assert spool.listdir("pending") == [] and spool.listdir("requests") == []
    assert json.load(open(os.path.join(spool.root, "held", spool.listdir("held")[0])))["attempts"] == 1
