"""Chaos: jobs keep running while the workers meet faults, over and over.

Fault modes: `kill9` (a worker killed with SIGKILL every few hundred milliseconds), `stop` (a
worker frozen with SIGSTOP past its lease while its job runs, then resumed: it must publish
nothing of the job that was taken over meanwhile), `readonly` (done/ made read-only for a second
at a time: a real read-only bind mount), `clock` (the workers' wall clock stepped an hour either
way, again and again).

Every job appends "ID ATTEMPT" to a marks file when it runs. Afterwards: every job completed, none
lost, none stuck or in two places, and every extra execution is explained by the job's history
(an attempt that recovery recorded as "worker lost"); the modes that kill nothing run each job
exactly once. Run as a script for the figures:

    python tests/test_chaos.py [JOBS] [WORKERS] [KILL_INTERVAL_SECONDS] [MODE]
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

FAULTS_DIR = os.path.join(os.path.dirname(__file__), "faults")
LEASE = 1.0  # seconds; heartbeats every 0.2 s


def _processes(root, with_job):
    """Host pids of the worker processes of ROOT in another PID namespace than ours; WITH_JOB:
    only those with a running job (a child whose environment holds QUEUECTL_CLAIM)."""
    mine, out = os.readlink("/proc/self/ns/pid"), []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{p}/ns/pid") == mine:
                continue
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"worker\0start" not in f.read():
                    continue
            with open(f"/proc/{p}/environ", "rb") as f:
                if f"QUEUECTL_SPOOL={root}".encode() not in f.read().split(b"\0"):
                    continue
            if with_job:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    kids = f.read().split()
                if not any(b"QUEUECTL_CLAIM=" in open(f"/proc/{k}/environ", "rb").read() for k in kids):
                    continue
            out.append(int(p))
        except OSError:
            continue
    return out


class Chaos:
    """One fault mode: start() before the pool runs, strike() every KILL_EVERY seconds, stop()."""

    def __init__(self, mode, s, rng, workers):
        self.mode, self.s, self.rng, self.workers = mode, s, rng, workers
        self.strikes = 0
        self.others = None
        self.mounted = False
        self.clock = os.path.join(s.root, "clock-offset")

    def start(self):
        if self.mode == "clock":
            self.s.env["PYTHONPATH"] = FAULTS_DIR + os.pathsep + self.s.env.get("PYTHONPATH", "")
            self.s.env["QUEUECTL_CLOCK_OFFSET"] = self.clock
        if self.mode == "stop":  # half the workers in a PID namespace of their own: judged by the lease
            ok = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0
            assert ok, "chaos mode 'stop' needs root and unshare(1) to make a PID namespace: it cannot run here"
            self.others = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", QUEUECTL, "worker", "start", "--count", str(self.workers)],
                env=self.s.env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.s.root, "others.log"), "w"),
            )

    def strike(self, pool_pids):
        if self.mode == "kill9":
            alive = [p for p in pool_pids if os.path.exists(f"/proc/{p}")]
            if alive:
                try:
                    os.kill(self.rng.choice(alive), signal.SIGKILL)
                    self.strikes += 1
                except ProcessLookupError:
                    pass
        elif self.mode == "stop":
            busy = _processes(self.s.root, with_job=True)
            if busy:
                pid = self.rng.choice(busy)
                os.kill(pid, signal.SIGSTOP)  # frozen with its job running...
                try:
                    time.sleep(LEASE * 2)  # ...past its lease (this is the fault: a bare wait is the point)
                finally:
                    os.kill(pid, signal.SIGCONT)
                self.strikes += 1
        elif self.mode == "readonly":
            done = self.s.path("done")
            subprocess.run(["mount", "--bind", done, done], check=True)
            self.mounted = True
            subprocess.run(["mount", "-o", "remount,ro,bind", done, done], check=True)
            try:
                time.sleep(0.4)  # done/ stays read-only this long
            finally:
                subprocess.run(["umount", done], check=True)
                self.mounted = False
            self.strikes += 1
        elif self.mode == "clock":
            with open(self.clock + ".new", "w") as f:
                f.write(str(self.rng.choice([-3600, 0, 3600])))
            os.replace(self.clock + ".new", self.clock)
            self.strikes += 1

    def stop(self):
        if self.mounted:
            subprocess.run(["umount", self.s.path("done")])
        if self.others is not None:
            for pid in _processes(self.s.root, with_job=False):  # unshare(1) --fork ignores SIGTERM itself
                for sig in (signal.SIGCONT, signal.SIGTERM):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            try:
                self.others.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.others.kill()


def chaos_run(root, jobs=2000, workers=4, kill_every=0.3, mode="kill9", deadline=240, seed=1, job_seconds=0.02):
    rng = random.Random(seed)
    s = Spool(root)
    s.run("init", check=0)
    for key, value in (("backoff-max", "0"), ("heartbeat-seconds", "0.2"), ("lease-seconds", str(LEASE)), ("max-retries", "50")):
        s.run("config", "set", key, value, check=0)
    marks = os.path.join(root, "marks")
    # a timeout the clock steps must not fire; a job long enough to be caught mid-run when frozen
    seconds = 0.3 if mode == "stop" else job_seconds
    lines = "".join(
        json.dumps({"id": f"c{i:05d}", "command": f'echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT" >> {marks}; sleep {seconds}', "timeout": 60}) + "\n"
        for i in range(jobs)
    )
    s.run("enqueue", "-", input=lines, check=0)
    chaos = Chaos(mode, s, rng, workers)
    chaos.start()
    log = open(os.path.join(root, "pool.log"), "w")
    pool = subprocess.Popen([QUEUECTL, "worker", "start", "--count", str(workers)], env=s.env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        end = time.monotonic() + deadline
        while s.counts()["completed"] < jobs and time.monotonic() < end:
            time.sleep(kill_every)  # the chaos itself: a fault every KILL_EVERY seconds
            chaos.strike([w["pid"] for w in s.live_workers()])
        wait_until(lambda: s.counts()["completed"] == jobs, timeout=max(5, end - time.monotonic()))
    finally:
        chaos.stop()
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)
        log.close()
    f = figures(s, jobs, chaos.strikes, marks)
    f["mode"] = mode
    logs = "".join(open(os.path.join(root, n)).read() for n in ("pool.log", "others.log") if os.path.exists(os.path.join(root, n)))
    f["results_fenced"] = logs.count("recovery took the job over")
    f["timed_out"] = sum(1 for n in s.ls("done") if "timed out" in open(s.path("done", n)).read())
    return f


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


def test_chaos_workers_frozen_past_their_lease(tmp_path):
    """Frozen holders are taken over (their jobs run again, each re-run recorded as `worker lost`)
    and, once resumed, publish nothing: the fence refuses them."""
    f = chaos_run(str(tmp_path / "spool"), jobs=60, workers=2, kill_every=0.1, mode="stop")
    print("chaos figures:", json.dumps(f))
    assert f["kills"] >= 3, f
    assert (f["completed"], f["lost"], f["stuck"], f["never_ran"]) == (60, 0, 0, 0), f
    assert f["duplicated_executions"] == f["explained_by_history"] and f["explained_by_history"] >= 1, f
    assert f["results_fenced"] >= 1, f  # a resumed holder met the fence


def test_chaos_done_folder_read_only_now_and_then(tmp_path):
    f = chaos_run(str(tmp_path / "spool"), jobs=300, workers=2, kill_every=0.4, mode="readonly")
    print("chaos figures:", json.dumps(f))
    assert f["kills"] >= 2, f
    assert (f["completed"], f["lost"], f["stuck"], f["never_ran"]) == (300, 0, 0, 0), f
    assert f["executions"] == 300, f  # nothing killed: every job ran exactly once


def test_chaos_clock_steps(tmp_path):
    f = chaos_run(str(tmp_path / "spool"), jobs=300, workers=2, kill_every=0.1, mode="clock")
    print("chaos figures:", json.dumps(f))
    assert f["kills"] >= 5, f
    assert (f["completed"], f["lost"], f["stuck"], f["never_ran"]) == (300, 0, 0, 0), f
    assert f["executions"] == 300 and f["timed_out"] == 0, f


if __name__ == "__main__":
    a = sys.argv[1:]
    args = [int(a[0]) if a else 2000, int(a[1]) if len(a) > 1 else 4, float(a[2]) if len(a) > 2 else 0.3, a[3] if len(a) > 3 else "kill9"]
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(chaos_run(os.path.join(d, "spool"), *args), indent=1))
