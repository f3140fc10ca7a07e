"""Scale (issue 11): does each cost follow the work at hand, or the spool's size and the worker count?

Every figure is a ratio of two measurements taken in the same run (big against small, many workers
against few), because this machine is shared and an absolute time means little. Used by
`bench/run.py --only scale`; `python bench/scale.py [--quick]` runs it alone.

Goals (issue 11):
  startup   first due job with BIG jobs waiting (scheduled later) <= 2x the time with SMALL waiting;
            worker peak RSS at BIG <= 40 MB; N workers do not multiply reads or memory by N
  herd      at most one failed claim per completed job at any worker count; CPU per job with many
            workers <= 1.2x CPU per job with 8; jobs/s never falls when workers are added
  views     `list --limit 20` with BIG completed <= 2x with SMALL; `status` with BIG pending <= 2x
            with SMALL; `dlq list` likewise
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the shared Bench context, samplers, done-job writer)


def _future_lines(n, tag, later_s=30 * 86400):
    at = (datetime.now(timezone.utc) + timedelta(seconds=later_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "".join(json.dumps({"id": f"{tag}-{i:07d}", "command": "true", "run_at": at}) + "\n" for i in range(n)).encode()


def _spool_with_waiting(b, d, waiting):
    spool = os.path.join(d, "spool")
    b.run_qc(spool, "init")
    for start in range(0, waiting, 50000):  # one enqueue call per 50k keeps its memory bounded
        b.run_qc(spool, "enqueue", "-", input=_future_lines(min(50000, waiting - start), f"w{start}"))
    return spool


def startup_case(b, waiting, count):
    """Seconds from `worker start --burst --count COUNT` to its one due job done, with WAITING jobs
    scheduled a month later; and the workers' peak RSS (max and sum)."""
    d = b.new_dir(f"startup{waiting}")
    try:
        spool = _spool_with_waiting(b, d, waiting)
        subprocess.run(["sync"], check=False)
        b.run_qc(spool, "enqueue", json.dumps({"id": "the-due-one", "command": "true"}))
        done = os.path.join(spool, "done", "the-due-one.json")
        t0 = time.perf_counter()
        p = b.popen(b.qc(spool, "worker", "start", "--count", str(count)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler = R.MemSampler(p.pid, interval=0.01)
        sampler.start()
        ok = R.wait_for(lambda: os.path.exists(done) or p.poll() is not None, 300, 0.002)
        dt = time.perf_counter() - t0
        sampler.stop()
        b.stop_proc(p)
        if not ok or not os.path.exists(done):
            raise RuntimeError(f"startup with {waiting} waiting: the due job was not done")
        rss = [w["hwm_kb"] / 1024 for w in sampler.workers.values()] or [0]
        return {"waiting": waiting, "count": count, "first_due_s": dt, "peak_rss_mb": max(rss), "total_rss_mb": sum(rss)}
    finally:
        b.cleanup(d)


def bench_startup(b, big, small, counts=(1, 4), runs=3):
    log = R.log
    log(f"scale/startup: first due job with {big} against {small} waiting, --count {counts}, median of {runs} ...")
    out = {}
    for count in counts:
        smalls = [startup_case(b, small, count) for _ in range(runs)]
        bigs = [startup_case(b, big, count) for _ in range(runs)]
        s = statistics.median(x["first_due_s"] for x in smalls)
        g = statistics.median(x["first_due_s"] for x in bigs)
        out[count] = {
            "small": smalls, "big": bigs, "small_s": s, "big_s": g, "ratio": g / s,
            "big_peak_rss_mb": max(x["peak_rss_mb"] for x in bigs), "big_total_rss_mb": max(x["total_rss_mb"] for x in bigs),
            "small_total_rss_mb": max(x["total_rss_mb"] for x in smalls),
        }
        log(f"  --count {count}: {small} waiting {s:.3f} s, {big} waiting {g:.3f} s ({g / s:.2f}x); peak RSS {out[count]['big_peak_rss_mb']:.0f} MB per worker, {out[count]['big_total_rss_mb']:.0f} MB in all")
    return out


_ERRORS = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)\s+(\w+)\s*$")


def _rename_errors(strace_out):
    """(calls, errors) of the rename system calls in `strace -c` output."""
    calls = errors = 0
    for line in strace_out.splitlines():
        parts = line.split()
        if parts and parts[-1] in ("rename", "renameat", "renameat2") and len(parts) >= 5:
            calls += int(parts[3])
            if len(parts) == 6:
                errors += int(parts[4])
    return calls, errors


def herd_case(b, n, workers, command="sleep 0.05", count_claims=False):
    """A drain of N x COMMAND with WORKERS: jobs/s, CPU per job; with COUNT_CLAIMS, under
    `strace -f -c` (slower: only its counts are used) the failed renames per job."""
    if not count_claims:
        res = R.drain_queuectl(b, [command] * n, workers)
        return {"workers": workers, "n": n, "rate": n / res["to_last_finish_s"], "cpu_ms_per_job": res["cpu_ms_per_job"]}
    d = b.new_dir("herd")
    try:
        spool = os.path.join(d, "spool")
        b.run_qc(spool, "init")
        b.enqueue_lines(spool, [command] * n)
        out = os.path.join(d, "strace.out")
        p = subprocess.run(["strace", "-f", "-c", "-o", out, "-e", "trace=rename,renameat,renameat2", *b.qc(spool, "worker", "start", "--burst", "--count", str(workers))], env=b.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=max(300, n))
        with open(out) as f:
            calls, errors = _rename_errors(f.read())
        return {"workers": workers, "n": n, "exit": p.returncode, "renames_per_job": calls / n, "failed_renames_per_job": errors / n}
    finally:
        b.cleanup(d)


def bench_herd(b, n, counts=(8, 16, 32, 64)):
    log = R.log
    log(f"scale/herd: {n} x 'sleep 0.05' with {counts} workers ...")
    rows = []
    for w in counts:
        r = herd_case(b, n, w)
        c = herd_case(b, n, w, count_claims=True) if shutil.which("strace") else {}
        r.update({k: v for k, v in c.items() if k.endswith("_per_job")})
        rows.append(r)
        log(f"  {w} workers: {r['rate']:.0f} jobs/s, CPU {r['cpu_ms_per_job']:.2f} ms/job, failed renames {r.get('failed_renames_per_job', float('nan')):.2f}/job")
    base = rows[0]
    return {
        "rows": rows,
        "cpu_ratio_max_vs_first": rows[-1]["cpu_ms_per_job"] / base["cpu_ms_per_job"],
        "rate_never_falls": all(later["rate"] >= 0.95 * earlier["rate"] for earlier, later in zip(rows, rows[1:])),
    }


def idle_burst_case(b, waiting, seconds=5.0, count=2):
    """CPU seconds of `worker start --burst --count COUNT` while one worker runs `sleep SECONDS`
    and the others idle (WAITING jobs scheduled later): an idle burst worker waits for the running
    job's end, and should cost almost nothing meanwhile."""
    d = b.new_dir(f"idle{waiting}")
    try:
        spool = _spool_with_waiting(b, d, waiting) if waiting else os.path.join(d, "spool")
        if not waiting:
            b.run_qc(spool, "init")
        b.run_qc(spool, "enqueue", json.dumps({"id": "the-long-one", "command": f"sleep {seconds}"}))
        cpu0 = R.children_cpu()
        t0 = time.perf_counter()
        p = b.popen(b.qc(spool, "worker", "start", "--burst", "--count", str(count)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.wait(timeout=300 + seconds)
        b.procs.remove(p)
        return {"waiting": waiting, "count": count, "wall_s": time.perf_counter() - t0, "cpu_s": R.children_cpu() - cpu0}
    finally:
        b.cleanup(d)


def bench_idle(b, waiting, seconds=5.0):
    log = R.log
    log(f"scale/idle: --burst --count 2, one runs sleep {seconds}, the other idles, {waiting} waiting ...")
    r = idle_burst_case(b, waiting, seconds)
    log(f"  {r['cpu_s']:.2f} s CPU in {r['wall_s']:.1f} s")
    return r


def _timed(b, spool, *args, runs=3):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = b.run_qc(spool, *args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), p.stdout.decode()


def _write_dead_jobs(spool, n):
    """N dead jobs written straight into dead/, in the documented format (as run.make_done_jobs)."""
    R.make_done_jobs(spool, n)
    for name in os.listdir(os.path.join(spool, "done")):
        path = os.path.join(spool, "done", name)
        with open(path, "rb") as f:
            job = json.loads(f.read())
        job.update(state="dead", exit_code=1, last_error="exit 1")
        with open(os.path.join(spool, "dead", name), "wb") as f:
            f.write(json.dumps(job).encode())
        os.unlink(path)


def bench_views(b, big, small, runs=3):
    log = R.log
    log(f"scale/views: list --limit 20, status, dlq list with {big} against {small} jobs ...")
    res = {}
    for n in (small, big):
        d = b.new_dir(f"views{n}")
        try:
            spool = os.path.join(d, "done-spool")
            b.run_qc(spool, "init")
            R.make_done_jobs(spool, n)
            b.run_qc(spool, "list", "--limit", "20")  # warm-up
            res.setdefault("list", {})[n], _ = _timed(b, spool, "list", "--limit", "20", runs=runs)
            pend = _spool_with_waiting(b, d, n)
            b.run_qc(pend, "status")
            res.setdefault("status", {})[n], _ = _timed(b, pend, "status", runs=runs)
            dead = os.path.join(d, "dead-spool")
            b.run_qc(dead, "init")
            _write_dead_jobs(dead, n)
            b.run_qc(dead, "dlq", "list")
            res.setdefault("dlq", {})[n], _ = _timed(b, dead, "dlq", "list", runs=runs)
        finally:
            b.cleanup(d)
    out = {k: {"small_s": v[small], "big_s": v[big], "ratio": v[big] / v[small]} for k, v in res.items()}
    for k, v in out.items():
        log(f"  {k}: {small} {v['small_s'] * 1000:.0f} ms, {big} {v['big_s'] * 1000:.0f} ms ({v['ratio']:.2f}x)")
    out.update(big=big, small=small)
    return out


def bench_scale(b, quick):
    big = 20000 if quick else 300000
    small = 1000
    return {
        "startup": bench_startup(b, big, small, counts=(1,) if quick else (1, 4), runs=1 if quick else 3),
        "herd": bench_herd(b, 400 if quick else 2000, counts=(8, 32) if quick else (8, 16, 32, 64)),
        "views": bench_views(b, big, small, runs=1 if quick else 3),
        "idle": bench_idle(b, 2000 if quick else 20000, seconds=2.0 if quick else 5.0),
    }


def rows(s):
    """Table rows (measurement, queuectl, reference, ratio, target, met) for run.build_table."""
    out = []
    st = s["startup"]
    for count, v in st.items():
        out.append((f"11 first due job with {v['big'][0]['waiting']} waiting, --count {count}", f"{v['big_s']:.2f} s", f"{v['small'][0]['waiting']} waiting: {v['small_s']:.2f} s", f"{v['ratio']:.2f}x", "<= 2x", R.yesno(v["ratio"] <= 2)))
        out.append((f"11 worker peak RSS with {v['big'][0]['waiting']} waiting, --count {count}", f"{v['big_peak_rss_mb']:.0f} MB ({v['big_total_rss_mb']:.0f} MB in all)", f"{v['small'][0]['waiting']} waiting: {v['small_total_rss_mb']:.0f} MB in all", "-", "<= 40 MB", R.yesno(v["big_peak_rss_mb"] <= 40)))
    h = s["herd"]
    for r in h["rows"]:
        fr = r.get("failed_renames_per_job")
        out.append((f"11 herd: {r['n']} x sleep 0.05, {r['workers']} workers", f"{r['rate']:.0f} jobs/s, {r['cpu_ms_per_job']:.2f} ms CPU/job", f"failed renames/job {fr:.2f}" if fr is not None else "-", "-", "<= 1 failed/job", R.yesno(fr is not None and fr <= 1)))
    out.append(("11 herd: CPU per job, most workers against 8", "-", "-", f"{h['cpu_ratio_max_vs_first']:.2f}x", "<= 1.2x", R.yesno(h["cpu_ratio_max_vs_first"] <= 1.2)))
    i = s.get("idle")
    if i:
        out.append((f"11 idle --burst worker beside a running job, {i['waiting']} waiting", f"{i['cpu_s']:.2f} s CPU (both workers)", f"{i['wall_s']:.1f} s wall", "-", "almost none", "-"))
    v = s["views"]
    for k, label in (("list", f"`list --limit 20`, N completed"), ("status", "`status`, N pending"), ("dlq", "`dlq list`, N dead")):
        out.append((f"11 {label}: {v['big']} against {v['small']}", f"{v[k]['big_s'] * 1000:.0f} ms", f"{v[k]['small_s'] * 1000:.0f} ms", f"{v[k]['ratio']:.2f}x", "<= 2x", R.yesno(v[k]["ratio"] <= 2)))
    return out


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="queuectl scale benchmark (issue 11)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tmpdir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    b = R.Bench(argparse.Namespace(tmpdir=args.tmpdir, keep=args.keep))
    try:
        s = bench_scale(b, args.quick)
    finally:
        b.kill_all()
        b.remove_all()
    head = ("measurement", "queuectl", "reference (same run)", "ratio", "target (issue 11)", "")
    table = rows(s)
    widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print("\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in table]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
