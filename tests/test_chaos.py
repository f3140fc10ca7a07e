"""Chaos: jobs keep running while workers are killed with SIGKILL every few hundred milliseconds.

Every job appends "ID ATTEMPT" to a marks file when it runs. Afterwards: every job completed, none
lost, none stuck, and every extra execution is explained by the job's history (an attempt that
recovery recorded as "worker lost"). Run as a script for the figures:

    python tests/test_chaos.py [JOBS] [WORKERS] [KILL_INTERVAL_SECONDS]
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(__file__))
from conftest import QUEUECTL, Spool, wait_until  # noqa: E402


def chaos_run(root, jobs=2000, workers=4, kill_every=0.3, deadline=240, seed=1, job_seconds=0.02):
    rng = random.Random(seed)
    s = Spool(root)
    s.run("init", check=0)
    for key, value in (("backoff-max", "0"), ("heartbeat-seconds", "0.2"), ("max-retries", "50")):
        s.run("config", "set", key, value, check=0)
    marks = os.path.join(root, "marks")
    lines = "".join(json.dumps({"id": f"c{i:05d}", "command": f'echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT" >> {marks}; sleep {job_seconds}'}) + "\n" for i in range(jobs))
    s.run("enqueue", "-", input=lines, check=0)
    log = open(os.path.join(root, "pool.log"), "w")
    pool = subprocess.Popen([QUEUECTL, "worker", "start", "--count", str(workers)], env=s.env, stdout=subprocess.DEVNULL, stderr=log)
    kills = 0
    try:
        end = time.monotonic() + deadline
        while s.counts()["completed"] < jobs and time.monotonic() < end:
            time.sleep(kill_every)  # the chaos itself: a kill every KILL_EVERY seconds
            pids = [w["pid"] for w in s.live_workers()]
            alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
            if alive:
                try:
                    os.kill(rng.choice(alive), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        wait_until(lambda: s.counts()["completed"] == jobs, timeout=max(5, end - time.monotonic()))
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)
        log.close()
    return figures(s, jobs, kills, marks)


def figures(s, jobs, kills, marks):
    with open(marks) as f:
        runs = [tuple(line.split()) for line in f if line.strip()]
    per_job = Counter(job_id for job_id, _ in runs)
    done = {n[:-5] for n in s.ls("done")}
    expected = {f"c{i:05d}" for i in range(jobs)}
    duplicated = sum(n - 1 for n in per_job.values() if n > 1)
    explained = 0
    unexplained = []
    for job_id, n in per_job.items():
        if n < 2:
            continue
        history = {h["attempt"]: h for h in json.load(open(s.path("done", job_id + ".json")))["history"]}
        attempts = sorted(int(a) for j, a in runs if j == job_id)
        lost = [a for a in attempts[:-1] if (history.get(a) or {}).get("error", "") and history[a]["error"].startswith("worker lost")]
        explained += len(lost)
        if len(lost) != n - 1:
            unexplained.append((job_id, attempts, [history[k].get("error") for k in sorted(history)]))
    return {
        "jobs": jobs,
        "kills": kills,
        "completed": len(done & expected),
        "lost": len(expected - done),
        "stuck": len(s.ls("processing")) + len(s.ls("tmp")),
        "never_ran": len(expected - set(per_job)),
        "executions": len(runs),
        "duplicated_executions": duplicated,
        "explained_by_history": explained,
        "unexplained": unexplained[:5],
    }


def test_chaos_kill_9_workers_while_2000_jobs_run(tmp_path):
    f = chaos_run(str(tmp_path / "spool"), jobs=2000, workers=4, kill_every=0.3)
    print("chaos figures:", json.dumps(f))
    assert f["kills"] >= 10, f
    assert (f["completed"], f["lost"], f["stuck"], f["never_ran"]) == (2000, 0, 0, 0), f
    assert f["duplicated_executions"] == f["explained_by_history"], f


if __name__ == "__main__":
    args = [int(sys.argv[1]) if len(sys.argv) > 1 else 2000, int(sys.argv[2]) if len(sys.argv) > 2 else 4, float(sys.argv[3]) if len(sys.argv) > 3 else 0.3]
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(chaos_run(os.path.join(d, "spool"), *args), indent=1))
