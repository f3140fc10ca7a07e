#!/usr/bin/env python3
"""A/B of the cost of job containment (issue 8): drains of `true` jobs, interleaved, per mechanism.

    python bench/containment_ab.py [-n 2000] [-w 2] [--rounds 5] [--base-src DIR]
    python bench/containment_ab.py --spawn [-n 20000]     # (as root) the per-job parts alone

Each round drains N `true` jobs with `queuectl worker start --count W --burst` once per variant,
in a fresh spool each time, and measures the wall time and the CPU of every process of the drain
(getrusage of the children: the supervisor, its workers and their jobs). Variants: each mechanism
forced with QUEUECTL_CONTAINMENT (cgroup only where it can be had), and with --base-src DIR the
code in DIR (a `queuectl` package folder's parent, e.g. from `git archive BASE queuectl | tar -x -C
DIR`) run through PYTHONPATH: the code before containment. Prints the median and best per variant.

--spawn measures what containment adds to each job without the rest of the drain, which on a
shared machine is noisier than the difference: N spawns of `/bin/sh -c true` as the runner does
them, by this process in its own cgroup and in a worker's job cgroup, interleaved in blocks of 100
(the CPU of the shells), and the worker's own per-job calls (reap and clear with nothing left).
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import find_queuectl  # noqa: E402  (bench/run.py: the installed console script)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def drain(q, env, n, workers, tmp):
    spool = tempfile.mkdtemp(prefix="ab-", dir=tmp)
    env = dict(env, QUEUECTL_SPOOL=spool)
    try:
        subprocess.run([q, "init"], env=env, check=True, capture_output=True)
        subprocess.run([q, "enqueue", "-"], env=env, check=True, capture_output=True, input=b'{"command": "true"}\n' * n)
        cpu0, t0 = children_cpu(), time.perf_counter()
        p = subprocess.run([q, "worker", "start", "--count", str(workers), "--burst"], env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if p.returncode != 0 or f"{n} completed" not in p.stderr:
            raise SystemExit(f"drain failed: {p.stderr[-2000:]}")
        return n / wall, cpu / n * 1000
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def spawn_ab(n):
    from queuectl import contain, procs, runner

    null = os.open(os.devnull, os.O_WRONLY)
    jobs = contain.CgroupJobs.create(procs.worker_id())  # this process now lives in it, as a worker does
    cpu = {"spawned from the parent cgroup (no containment)": 0.0, "spawned from the worker's job cgroup": 0.0}
    blocks = max(1, n // 100)
    try:
        for _ in range(blocks):
            for name in cpu:
                contain.move_self(jobs.home if name.startswith("spawned from the parent") else jobs.path)
                c0 = children_cpu()
                for _ in range(100):
                    os.waitpid(runner.spawn("true", os.environ, None, null), 0)
                cpu[name] += children_cpu() - c0
        contain.move_self(jobs.path)
        print(f"\n/bin/sh -c true spawned and reaped {blocks * 100} times per variant, interleaved in blocks of 100")
        print("| what | CPU per job |\n|---|---|")
        for name, total in cpu.items():
            print(f"| job's shell, {name} | {total / (blocks * 100) * 1e6:.1f} us |")
        sub = contain.SubreaperJobs()  # its calls only: this process is not made a subreaper
        for name, calls in (
            ("cgroup: reap + clear (nothing left)", lambda: (jobs.reap(1), jobs.clear(1, 2.0))),
            ("subreaper: reap + clear (nothing left)", lambda: (sub.reap(1), sub.clear(1, 2.0))),
        ):
            t0 = time.process_time()
            for _ in range(n):
                calls()
            print(f"| worker, {name} | {(time.process_time() - t0) / n * 1e6:.1f} us |")
    finally:
        os.close(null)
        jobs.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-w", "--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base-src", help="folder holding the `queuectl` package before containment")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--spawn", action="store_true", help="measure the per-job parts alone (as root)")
    args = ap.parse_args()
    if args.spawn:
        return spawn_ab(args.n)

    q = find_queuectl()
    base = {k: v for k, v in os.environ.items() if k not in ("QUEUECTL_CONTAINMENT", "PYTHONPATH")}
    variants = {}
    if args.base_src:
        variants["before (base code)"] = dict(base, PYTHONPATH=os.path.abspath(args.base_src))
    for mode in ("group", "subreaper", "cgroup"):
        variants[mode] = dict(base, QUEUECTL_CONTAINMENT=mode)
    results = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, env in variants.items():
            rate, cpu = drain(q, env, args.n, args.workers, args.tmpdir)
            results[name].append((rate, cpu))
            print(f"round {r + 1} {name:20} {rate:7.0f} jobs/s  {cpu:.3f} ms CPU/job", file=sys.stderr)
    print(f"\n`true` x{args.n}, W={args.workers}, {args.rounds} interleaved rounds (CPU: all processes of the drain)\n")
    print("| variant | jobs/s median (best) | CPU per job median (best) |")
    print("|---|---|---|")
    for name, rows in results.items():
        rates, cpus = [x[0] for x in rows], [x[1] for x in rows]
        print(f"| {name} | {statistics.median(rates):.0f} ({max(rates):.0f}) | {statistics.median(cpus):.3f} ms ({min(cpus):.3f} ms) |")


if __name__ == "__main__":
    main()
