"""Issue 10: `queuectl cancel ID...` end to end, with real workers through the installed CLI.

A cancelled job is in dead/ with last_error "cancelled" and never runs again unless retried; a
running one has its whole process tree stopped (TERM, KILL after the 2 s grace) by its worker,
which the command reaches through a request file in requests/, not through a pid."""

import json
import os
import subprocess
import time

from conftest import QUEUECTL, wait_until

GRACE = 2.0  # runner.KILL_GRACE: the documented SIGTERM -> SIGKILL grace


def dead_job(spool, job_id):
    with open(spool.path("dead", f"{job_id}.json")) as f:
        return json.load(f)


def pids_alive(pidfile):
    """The pids written to PIDFILE that are still running (not zombies)."""
    try:
        with open(pidfile) as f:
            pids = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive


def running(spool, job_id):
    return any(n.split("@")[0].endswith("_" + job_id) and n.endswith(".json") for n in spool.ls("processing"))


def test_cancel_a_pending_job(spool):
    spool.enqueue({"id": "p1", "command": "true"})
    p = spool.run("cancel", "p1", check=0)
    assert p.stdout.startswith("p1: cancelled") and p.stderr == ""
    job = dead_job(spool, "p1")
    assert (job["state"], job["last_error"], job["attempts"], job["history"]) == ("dead", "cancelled", 0, [])
    assert spool.ls("pending") == [] and spool.ls("processing") == [] and spool.ls("requests") == []
    spool.run("worker", "start", "--burst", check=0)
    assert spool.counts()["completed"] == 0  # it never runs
    assert dead_job(spool, "p1")["attempts"] == 0


def test_cancel_a_failed_job_waiting_for_its_retry(spool):
    spool.run("config", "set", "backoff-base", "1000", check=0)  # its retry is far away
    spool.enqueue({"id": "f1", "command": "exit 4", "max_retries": 3})
    spool.run("worker", "start", "--burst", check=0)
    assert spool.show("f1")["state"] == "failed"
    out = spool.json("cancel", "f1", "--json")
    assert out == [{"id": "f1", "ok": True, "state": "dead", "note": "cancelled (failed, never runs again unless retried)"}]
    job = dead_job(spool, "f1")
    assert (job["state"], job["last_error"], job["attempts"], len(job["history"])) == ("dead", "cancelled", 1, 1)
    assert job["history"][0]["error"] == "exited with status 4"  # its attempt is recorded as it was


def test_cancel_a_completed_or_dead_job_is_refused_and_changes_nothing(spool):
    spool.enqueue({"id": "ok", "command": "true"})
    spool.enqueue({"id": "bad", "command": "exit 1", "max_retries": 0})
    spool.run("worker", "start", "--burst", check=0)
    before = (spool.ls("done"), spool.ls("dead"))
    p = spool.run("cancel", "ok", "bad", "nosuch", check=1)
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        "queuectl: job 'ok' is completed: nothing to cancel",
        "queuectl: job 'bad' is dead already: nothing to cancel",
        "queuectl: no job with id 'nosuch'",
    ]
    assert (spool.ls("done"), spool.ls("dead")) == before
    assert dead_job(spool, "bad")["last_error"] == "exited with status 1"


def test_cancel_several_ids_exit_1_if_any_fails_and_json_says_which(spool):
    spool.enqueue({"id": "a", "command": "true"})
    p = spool.run("cancel", "--json", "a", "zz", check=1)
    out = json.loads(p.stdout)
    assert [(r["id"], r["ok"]) for r in out] == [("a", True), ("zz", False)]
    assert out[1]["error"] == "no job with id 'zz'"
    assert p.stderr == "queuectl: no job with id 'zz'\n"


def test_cancel_a_running_job_kills_its_tree_even_a_child_that_ignores_term(spool, tmp_path):
    pidfile = tmp_path / "pids"
    # the shell and a child both ignore SIGTERM: only the SIGKILL after the grace ends them
    cmd = f"trap '' TERM; sh -c 'trap \"\" TERM; echo $$ >> {pidfile}; sleep 30; true' & echo $$ >> {pidfile}; sleep 30; wait"
    spool.enqueue({"id": "r1", "command": cmd, "max_retries": 3})
    spool.start_workers()
    wait_until(lambda: len(pids_alive(pidfile)) == 2, timeout=20, message="the job and its child never started")
    t = time.monotonic()
    p = spool.run("cancel", "r1", check=0)
    took = time.monotonic() - t
    assert p.stdout == "r1: cancelled: its running attempt was stopped\n", p.stderr
    assert took < GRACE + 2.5, f"cancel took {took:.1f} s"
    assert pids_alive(pidfile) == []  # the whole tree, the TERM-proof child too
    job = dead_job(spool, "r1")
    assert (job["state"], job["last_error"], job["attempts"]) == ("dead", "cancelled", 1)
    assert job["history"][-1]["error"] == "cancelled" and job["history"][-1]["exit_code"] is None
    assert spool.ls("requests") == [] and spool.ls("processing") == []
    time.sleep(0.5)  # not a sync: a chance for a wrong retry to show, which the next line refuses
    assert spool.ls("pending") == [] and spool.counts()["dead"] == 1


def test_cancel_from_a_second_process_while_the_worker_runs(spool, tmp_path):
    """Two cancels race for one running job from two processes: both succeed, the job ends once."""
    marker = tmp_path / "started"
    spool.enqueue({"id": "r2", "command": f"touch {marker}; sleep 30"})
    spool.start_workers()
    wait_until(marker.exists, timeout=20, message="the job never started")
    procs = [
        subprocess.Popen([QUEUECTL, "cancel", "r2"], env=spool.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=30) for p in procs]
    results = sorted((p.returncode, out, err) for p, (out, err) in zip(procs, outs))
    # the first to ask waits for the worker; the other either waits too, or, started once the job
    # is dead already, says so (a dead job is left alone): either way the job ended once
    assert results[0] == (0, "r2: cancelled: its running attempt was stopped\n", ""), results
    assert results[1] in (
        (0, "r2: cancelled: its running attempt was stopped\n", ""),
        (1, "", "queuectl: job 'r2' is dead already (cancelled): nothing to cancel\n"),
    ), results
    job = dead_job(spool, "r2")
    assert (job["last_error"], job["attempts"]) == ("cancelled", 1)
    assert spool.ls("requests") == []


def test_a_cancel_that_reaches_no_worker_times_out_with_a_clear_message(spool, tmp_path):
    """A job claimed by a worker that is stopped (SIGSTOP) cannot be cancelled now: exit 1 with
    why; the request stays, and the job is cancelled once its worker runs again."""
    marker = tmp_path / "started"
    spool.enqueue({"id": "r3", "command": f"touch {marker}; sleep 30"})
    spool.start_workers()
    wait_until(marker.exists, timeout=20, message="the job never started")
    (worker,) = spool.live_workers()
    os.kill(worker["pid"], 19)  # SIGSTOP
    try:
        p = spool.run("cancel", "--timeout", "1", "r3", check=1)
        assert p.stderr.startswith("queuectl: job 'r3' is still running on worker ") and "after 1 s" in p.stderr
        assert spool.ls("requests") == ["r3.cancel"]
    finally:
        os.kill(worker["pid"], 18)  # SIGCONT
    wait_until(lambda: spool.ls("dead") == ["r3.json"], timeout=20, message="the worker never answered the request")
    assert dead_job(spool, "r3")["last_error"] == "cancelled"
    wait_until(lambda: spool.ls("requests") == [], timeout=5)


def test_a_cancelled_job_runs_again_only_after_retry(spool):
    spool.enqueue({"id": "c1", "command": "true"})
    spool.run("cancel", "c1", check=0)
    spool.run("worker", "start", "--burst", check=0)
    assert spool.ls("dead") == ["c1.json"]
    assert spool.run("retry", "c1", check=0).stdout == "c1: revived from dead/ with attempts 0\n"
    spool.run("worker", "start", "--burst", check=0)
    assert spool.ls("done") == ["c1.json"]


def test_the_worker_counts_a_cancelled_attempt_as_cancelled(spool, tmp_path):
    """A cancelled attempt ends its job in dead/ but is counted apart from the dead ones."""
    marker = tmp_path / "started"
    spool.enqueue({"id": "k1", "command": f"touch {marker}; sleep 30"})
    p = spool.start_workers()
    wait_until(marker.exists, timeout=20, message="the job never started")
    spool.run("cancel", "k1", check=0)
    p.send_signal(15)
    _, err = p.communicate(timeout=30)
    assert "job k1 attempt 1: cancelled, now dead" in err
    assert [l for l in err.splitlines() if l.startswith("queuectl: workers stopped:")] == [
        "queuectl: workers stopped: 0 completed, 0 failed, 0 dead, 1 cancelled"
    ]


def test_a_worker_that_claims_the_job_between_the_look_and_the_rename(tmp_path):
    """The race of transition 11 with a claim (4): cancel looks, finds the job pending, but a
    worker's claim wins the rename. cancel must then find it running, ask its worker through
    requests/, and report success only once the worker has ended it cancelled."""
    import threading

    from queuectl import jobctl, policy
    from queuectl import job as jobdoc
    from queuectl.spool import Spool

    spool = Spool(str(tmp_path / "spool")).ensure()
    spool.enqueue([jobdoc.accept({"id": "race", "command": "true"}, time.time(), 3)])
    holder = "otherhost.1.2.n00000000"
    claimed = {}

    class Racing(Spool):
        def take(self, op, origin):
            if op == "cancel" and not claimed:  # the worker's rename lands first
                claimed["name"] = f"{origin[:-5]}@{holder}.json"
                os.rename(self._path("pending", origin), self._path("processing", claimed["name"]))
            return super().take(op, origin)

    def worker():  # answers the request as a worker does: stop, record cancelled, commit
        wait_until(lambda: spool.requested("race", "cancel"), timeout=10, message="no request came")
        claim = [c for c in spool.claims() if c.job_id == "race"][0]
        t = time.time()
        job, nb = policy.record_attempt(spool.read_claim(claim), started=t, finished=t, exit_code=None, error=None,
                                        worker=holder, log=None, base=2, maximum=0, cancelled=True)
        spool.finish(claim, job, nb)

    th = threading.Thread(target=worker)
    th.start()
    result = jobctl.cancel(Racing(spool.root), "race", time.time(), time.monotonic, timeout=10)
    th.join()
    assert claimed and result.state == "dead" and result.note == "cancelled: its running attempt was stopped"
    job = json.load(open(os.path.join(spool.root, "dead", "race.json")))
    assert (job["last_error"], job["attempts"]) == ("cancelled", 1)
    assert os.listdir(os.path.join(spool.root, "requests")) == []


def test_a_running_job_notices_its_cancel_within_a_second_not_at_its_next_tick(spool, tmp_path):
    """The worker wakes on the request's file-system event: with a heartbeat (its tick while a
    job runs) of 20 s, a job that obeys SIGTERM is still cancelled at once."""
    spool.run("config", "set", "lease-seconds", "120", check=0)
    spool.run("config", "set", "heartbeat-seconds", "20", check=0)
    marker = tmp_path / "started"
    spool.enqueue({"id": "q", "command": f"touch {marker}; sleep 60"})
    spool.start_workers()
    wait_until(marker.exists, timeout=20, message="the job never started")
    time.sleep(0.3)  # not a sync: past the spawn-time look, so only the event can wake the worker
    t = time.monotonic()
    spool.run("cancel", "q", check=0)
    took = time.monotonic() - t
    assert took < 3.0, f"cancel took {took:.1f} s"
    assert dead_job(spool, "q")["last_error"] == "cancelled"


def test_another_users_shell_cancels_a_running_job_through_the_spool_but_may_not_move_a_waiting_one():
    """In a spool shared through a group: user A cancels root's running job (a request its worker
    answers, no pid or signal of A's involved), but may not move root's waiting job (owner check);
    root may cancel A's waiting job."""
    import shutil
    import tempfile

    from conftest import Spool
    from unixusers import UserSpool, users

    with users(1, group=True) as ((a,), group):
        parent = tempfile.mkdtemp(prefix="qc-cancel-", dir="/tmp")
        os.chmod(parent, 0o755)
        root = Spool(os.path.join(parent, "spool"))
        try:
            root.run("init", "--group", group, check=0)
            root.run("config", "set", "trusted-users", f"root,{a}", check=0)
            user = UserSpool(root.root, a)
            marker = os.path.join(parent, "started")
            root.enqueue({"id": "run", "command": f"touch {marker}; sleep 60"})
            root.enqueue({"id": "wait", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
            user.enqueue({"id": "mine", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
            root.start_workers()
            wait_until(lambda: os.path.exists(marker), timeout=20, message="the job never started")
            p = user.run("cancel", "run", "wait", check=1)
            assert p.stdout == "run: cancelled: its running attempt was stopped\n", p.stderr
            assert p.stderr == "queuectl: job 'wait' belongs to user root; only root can cancel it\n"
            assert json.load(open(root.path("dead", "run.json")))["last_error"] == "cancelled"
            assert root.show("wait")["state"] == "pending"
            assert root.run("cancel", "mine", check=0).stdout.startswith("mine: cancelled")
        finally:
            root.stop_all()
            shutil.rmtree(parent, ignore_errors=True)
