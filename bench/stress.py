#!/usr/bin/env python3
"""Load: N jobs (default 100,000) enqueued in bulk, drained by W workers (default 4).

Checks that none is lost, processing/ and tmp/ end empty, and worker memory stays bounded;
prints the figures. Run after `pip install .`:  python bench/stress.py [--jobs N] [--workers W]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def queuectl():
    here = os.path.join(os.path.dirname(sys.executable), "queuectl")
    return here if os.path.exists(here) else shutil.which("queuectl")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def rss_kb(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--spool", help="spool folder to use (default: a new temporary one)")
    args = ap.parse_args()
    root = args.spool or tempfile.mkdtemp(prefix="queuectl-stress-")
    env = dict(os.environ, QUEUECTL_SPOOL=root)
    q = queuectl()
    lines = "".join(f'{{"id": "s{i:07d}", "command": "true"}}\n' for i in range(args.jobs))
    t0 = time.monotonic()
    p = subprocess.run([q, "enqueue", "-"], input=lines, env=env, capture_output=True, text=True)
    enqueue_s = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.split()) == args.jobs

    peak = {}
    stop = threading.Event()
    t0 = time.monotonic()
    pool = subprocess.Popen([q, "worker", "start", "--burst", "--count", str(args.workers)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sample():
        while not stop.is_set():
            for pid in children(pool.pid):
                peak[pid] = max(peak.get(pid, 0), rss_kb(pid, "VmHWM"))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pool.wait()
    drain_s = time.monotonic() - t0
    stop.set()
    sampler.join()

    done = len(os.listdir(os.path.join(root, "done")))
    figures = {
        "jobs": args.jobs,
        "workers": args.workers,
        "enqueue_seconds": round(enqueue_s, 2),
        "enqueue_jobs_per_s": round(args.jobs / enqueue_s),
        "drain_seconds": round(drain_s, 2),
        "drain_jobs_per_s": round(args.jobs / drain_s),
        "completed": done,
        "lost": args.jobs - done,
        "left_in_processing": len(os.listdir(os.path.join(root, "processing"))),
        "left_in_tmp": len(os.listdir(os.path.join(root, "tmp"))),
        "left_in_pending": len(os.listdir(os.path.join(root, "pending"))),
        "peak_worker_rss_mb": round(max(peak.values(), default=0) / 1024, 1),
        "pool_exit": pool.returncode,
    }
    print(json.dumps(figures, indent=1))
    if not args.spool:
        shutil.rmtree(root)
    ok = figures["lost"] == 0 and figures["left_in_processing"] == figures["left_in_tmp"] == 0 and pool.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
