"""A worker holds no growing resources: its open fds and RSS after 10,000 jobs match those after 100."""

import os
import subprocess

from conftest import QUEUECTL, wait_until


def fds_and_rss(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss_kb


def enqueue_many(spool, start, n):
    lines = "".join(f'{{"id": "r{i:06d}", "command": "true"}}\n' for i in range(start, start + n))
    spool.run("enqueue", "-", input=lines, check=0)


def test_worker_fds_and_memory_do_not_grow(spool, tmp_path):
    log = open(tmp_path / "pool.log", "w")
    pool = subprocess.Popen([QUEUECTL, "worker", "start"], env=spool.env, stdout=subprocess.DEVNULL, stderr=log)
    spool.procs.append(pool)
    wait_until(lambda: spool.live_workers(), timeout=20)
    pid = spool.live_workers()[0]["pid"]
    enqueue_many(spool, 0, 100)
    spool.wait_counts(completed=100, timeout=60)
    fds_100, rss_100 = fds_and_rss(pid)
    samples = {}
    for batch in range(10):
        enqueue_many(spool, 100 + batch * 990, 990)
        spool.wait_counts(completed=100 + (batch + 1) * 990, timeout=120)
        samples[100 + (batch + 1) * 990] = fds_and_rss(pid)
    fds_10k, rss_10k = samples[10000]
    print(f"after 100 jobs: {fds_100} fds, {rss_100} kB RSS; after 10,000: {fds_10k} fds, {rss_10k} kB RSS; samples {samples}")
    assert fds_10k == fds_100
    # bounded: the first thousands of jobs may raise the peak (a full commit batch), but a leak
    # would keep growing between 2,080 and 10,000 jobs
    assert rss_10k - rss_100 < 3072, (rss_100, rss_10k)
    assert rss_10k - samples[2080][1] < 512, samples
    assert spool.live_workers()[0]["pid"] == pid  # the same worker did all of it
