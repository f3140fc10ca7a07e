#!/usr/bin/env python3
"""Where a worker's time goes while it drains `true` jobs (the Profile section of RESULTS.md).

    python bench/profile_drain.py cprofile [-n 1000]   # one in-process worker (burst) under cProfile
    python bench/profile_drain.py cpu      [-n 2000]   # CPU per job, by thread, no profiler
    python bench/profile_drain.py steps    [-n 2000]   # wall and CPU per job of each worker step
    python bench/profile_drain.py strace   [-n 500]    # syscalls per job of one worker (needs strace)
    python bench/profile_drain.py spawn    [-n 1000]   # cost of the spawn primitives alone
    python bench/profile_drain.py floor    [-n 2000]   # the protocol's file operations in plain Python

Imports queuectl (cprofile) and runs the installed console script (strace); a fresh temporary
spool each time. Not part of the benchmark table; the numbers are per job.
"""

import argparse
import collections
import cProfile
import glob
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import find_queuectl  # noqa: E402


def make_spool(n, command="true"):
    d = tempfile.mkdtemp(prefix="queuectl-prof-")
    spool = os.path.join(d, "spool")
    data = "".join(json.dumps({"command": command}) + "\n" for _ in range(n)).encode()
    subprocess.run([find_queuectl(), "--spool", spool, "init"], stdout=subprocess.DEVNULL, check=True)  # a --spool must exist
    subprocess.run([find_queuectl(), "--spool", spool, "enqueue", "-"], input=data, stdout=subprocess.DEVNULL, check=True)
    return d, spool


def cmd_cprofile(args):
    from queuectl.spool import Spool
    from queuectl.worker import Worker

    d, spool = make_spool(args.n)
    try:
        err = open(os.path.join(d, "worker.stderr"), "w")
        old, sys.stderr = sys.stderr, err
        w = Worker(Spool(spool), burst=True)
        pr = cProfile.Profile()
        t0, c0 = time.perf_counter(), time.process_time()
        pr.enable()
        try:
            w.run()
        finally:
            pr.disable()
            sys.stderr = old
            err.close()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = len(os.listdir(os.path.join(spool, "done")))
        print(f"{n} jobs, one worker under cProfile: {wall:.2f} s wall ({n / wall:.0f} jobs/s), {cpu / n * 1000:.2f} ms worker CPU/job (children not counted)")
        out = io.StringIO()
        st = pstats.Stats(pr, stream=out)
        st.sort_stats("tottime").print_stats(args.top)
        st.sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
        if args.out:
            pr.dump_stats(args.out)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _thread_cpu():
    """{tid: (utime s, stime s)} of this process's threads, from /proc/self/task/*/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) / tick, int(fields[12]) / tick)
        except (OSError, ValueError, IndexError):
            pass
    return out


def cmd_cpu(args):
    """CPU per job of one in-process worker (burst), split by thread, and of its job processes."""
    import threading

    from queuectl.spool import Spool
    from queuectl.worker import Worker

    snap = {}

    class Probe(Worker):
        def teardown(self):
            names = {t.native_id: t.name for t in threading.enumerate()}
            snap.update({names.get(tid, str(tid)) if tid != os.getpid() else "main": cpu for tid, cpu in _thread_cpu().items()})
            super().teardown()

    d, spool = make_spool(args.n)
    try:
        err = open(os.path.join(d, "worker.stderr"), "w")
        old, sys.stderr = sys.stderr, err
        t0, c0 = time.perf_counter(), os.times()
        try:
            Probe(Spool(spool), burst=True).run()
        finally:
            sys.stderr = old
            err.close()
        wall, c1 = time.perf_counter() - t0, os.times()
        n = len(os.listdir(os.path.join(spool, "done")))
        kids = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        me = (c1.user - c0.user) + (c1.system - c0.system)
        print(f"{n} jobs, one in-process worker, no profiler: {wall:.2f} s wall = {wall / n * 1000:.3f} ms/job ({n / wall:.0f} jobs/s)")
        print(f"  worker process CPU  {me / n * 1000:.3f} ms/job (user {(c1.user - c0.user) / n * 1000:.3f}, sys {(c1.system - c0.system) / n * 1000:.3f})")
        for name, (u, s_) in sorted(snap.items(), key=lambda kv: -sum(kv[1])):
            if u + s_ > 0:
                print(f"    thread {name:<22} {(u + s_) / n * 1000:.3f} ms/job (user {u / n * 1000:.3f}, sys {s_ / n * 1000:.3f})")
        print(f"  job processes (sh)  {kids / n * 1000:.3f} ms/job")
        print(f"  total               {(me + kids) / n * 1000:.3f} ms CPU/job")
    finally:
        shutil.rmtree(d, ignore_errors=True)


STEPS = [
    "worker.Worker.intake_events", "worker.Worker.claim", "worker.Worker.run_and_finish", "worker.Worker.settle",
    "worker.Worker.log", "worker.Worker.heartbeat", "worker.Worker.recover", "worker.Worker.wait",
    "settings.Watched.refresh", "intake.Intake.scan", "intake.Intake.consider", "results.Unsettled.settle",
    "spool.Spool.take", "spool.Spool.read", "fsio.read_regular", "spool.Spool.open_log", "spool.Spool.finish_many",
    "spool.Spool._stage", "spool.Spool._publish", "fsio.unlink_quiet", "fsio.fsync_dir",
    "runner.run", "runner.spawn", "runner.Waiter.wait", "runner.OutputPump.close",
    "policy.record_attempt", "job.parse_bytes", "job.validate", "job.dumps", "timeutil.iso", "timeutil.parse_stamp",
]


def cmd_steps(args):
    """Wall and CPU (thread_time) per job of each step of one in-process worker, by wrapping them."""
    import importlib
    import threading

    from queuectl.spool import Spool
    from queuectl.worker import Worker

    stats = {}  # name -> [calls, wall, cpu, thread names]
    lock = threading.Lock()
    mods = [importlib.import_module(f"queuectl.{m}") for m in ("worker", "settings", "intake", "spool", "fsio", "layout", "results", "runner", "policy", "job", "timeutil", "dueindex", "recovery", "watch")]

    def wrap(name, fn):
        def timed(*a, **kw):
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                w, c = time.perf_counter() - w0, time.thread_time() - c0
                with lock:
                    st = stats.setdefault(name, [0, 0.0, 0.0, set()])
                    st[0] += 1
                    st[1] += w
                    st[2] += c
                    st[3].add(threading.current_thread().name)
        return timed

    for dotted in STEPS:
        modname, *attrs = dotted.split(".")
        try:
            mod = importlib.import_module(f"queuectl.{modname}")
            owner = mod
            for a in attrs[:-1]:
                owner = getattr(owner, a)
            orig = getattr(owner, attrs[-1])
        except (ImportError, AttributeError):
            continue  # the code changed: skip what is gone
        timed = wrap(dotted, orig)
        if isinstance(owner, type):
            setattr(owner, attrs[-1], timed)
        else:  # a module function: also replace the names other modules imported
            for m in mods:
                if getattr(m, attrs[-1], None) is orig:
                    setattr(m, attrs[-1], timed)

    d, spool = make_spool(args.n)
    try:
        err = open(os.path.join(d, "worker.stderr"), "w")
        old, sys.stderr = sys.stderr, err
        t0 = time.perf_counter()
        try:
            Worker(Spool(spool), burst=True).run()
        finally:
            sys.stderr = old
            err.close()
        wall = time.perf_counter() - t0
        n = len(os.listdir(os.path.join(spool, "done")))
        print(f"{n} jobs, one in-process worker with each step timed (inclusive; nested steps count in their callers too): {wall / n * 1000:.3f} ms wall/job")
        print(f"  {'step':<32} {'calls/job':>9} {'wall ms/job':>11} {'CPU ms/job':>10}  thread")
        for name, (calls, w, c, threads) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:<32} {calls / n:9.2f} {w / n * 1000:11.3f} {c / n * 1000:10.3f}  {','.join(sorted(threads))}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cmd_strace(args):
    if not shutil.which("strace"):
        sys.exit("strace is not installed")
    d, spool = make_spool(args.n)
    try:
        tdir = os.path.join(d, "trace")
        os.mkdir(tdir)
        subprocess.run(["strace", "-f", "-ff", "-o", os.path.join(tdir, "t"), find_queuectl(), "--spool", spool, "worker", "start", "--burst", "--count", "1"], stderr=subprocess.DEVNULL, check=True)
        n = len(os.listdir(os.path.join(spool, "done")))
        per_file = {}
        for path in glob.glob(os.path.join(tdir, "t.*")):
            c = collections.Counter()
            with open(path, errors="replace") as f:
                for line in f:
                    m = re.match(r"([a-z_0-9]+)\(", line)
                    if m:
                        c[m.group(1)] += 1
            per_file[path] = c
        jobs = [p for p, c in per_file.items() if c.get("execve")]
        busy = sorted((p for p, c in per_file.items() if p not in jobs and sum(c.values()) > n), key=lambda p: -sum(per_file[p].values()))
        total = collections.Counter()
        for p in busy:
            total.update(per_file[p])
        print(f"{n} jobs, `worker start --burst --count 1` under strace -f; {len(jobs)} job processes; per job:")
        for p in busy:
            c = per_file[p]
            role = "spawns the jobs: worker main thread" if (c.get("clone3") or c.get("clone") or c.get("vfork")) and c.get("wait4") else ("fsyncs: committer thread" if c.get("fsync") else "other thread or the supervisor")
            print(f"\n{os.path.basename(p)} ({role}): {sum(c.values()) / n:.1f} syscalls/job")
            for name, k in c.most_common(args.top):
                if k / n >= 0.05:
                    print(f"  {name:<16} {k / n:6.2f}")
        print("\nall worker threads together, per job: " + ", ".join(f"{k} {total[k] / n:.2f}" for k in ("fsync", "rename", "openat", "unlink", "write", "read", "futex") if total[k]))
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"kept {d}")


def cmd_spawn(args):
    """Per-job cost of the spawn primitives, sequential in one process (no queue at all)."""
    n = args.n
    env = dict(os.environ)
    devnull = os.open(os.devnull, os.O_WRONLY)
    out = {}

    def timeit(name, fn):
        fn()  # warm
        t0, c0 = time.perf_counter(), os.times()
        for _ in range(n):
            fn()
        wall = time.perf_counter() - t0
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        out[name] = (wall / n * 1000, cpu / n * 1000)
        print(f"  {name:<58} {wall / n * 1000:6.3f} ms wall/job  {cpu / n * 1000:6.3f} ms CPU/job")

    def ps(argv, fa=True, setsid=True, environ=env):
        kw = {"setsid": True} if setsid else {}
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)] if fa else []
        pid = os.posix_spawn(argv[0], argv, environ, file_actions=actions, **kw)
        os.waitpid(pid, 0)

    def ps_pipe():  # what runner.run does: a pipe for the output, pidfd, select, waitpid
        import select

        r, w = os.pipe()
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "true"], env, file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)], setsid=True)
        os.close(w)
        pfd = os.pidfd_open(pid)
        while True:
            rd, _, _ = select.select([pfd, r], [], [], 5)
            if r in rd and not os.read(r, 65536):
                break
        os.waitpid(pid, 0)
        os.close(pfd)
        os.close(r)

    print(f"spawn primitives, {n} sequential jobs in one process:")
    timeit("os.posix_spawn /bin/sh -c true (file actions, setsid)", lambda: ps(["/bin/sh", "-c", "true"]))
    timeit("  same, with an output pipe, pidfd and select (runner.run)", ps_pipe)
    timeit("os.posix_spawn /bin/sh -c true (no file actions, no setsid)", lambda: ps(["/bin/sh", "-c", "true"], fa=False, setsid=False))
    timeit("os.posix_spawn /bin/true (no shell)", lambda: ps(["/bin/true"]))
    timeit("subprocess.run('true', shell=True)", lambda: subprocess.run("true", shell=True))
    timeit("os.fork + os.execv /bin/sh -c true", lambda: _fork_exec())
    os.close(devnull)


def cmd_floor(args):
    """The cost floor of the protocol in plain Python, no queuectl: one process runs N `true` jobs
    through the same file operations as a worker (claim rename, read + parse, spawn + wait, write
    the result, rename into done/, unlink the claim), with and without the fsyncs."""
    n = args.n
    env = dict(os.environ)
    job = {"command": "true", "id": "x", "max_retries": 3, "priority": 0, "state": "pending", "attempts": 0,
           "created_at": "2026-11-28T00:00:00.000000Z", "updated_at": "2026-11-28T00:00:00.000000Z", "exit_code": None,
           "last_error": None, "history": [], "token": "0123456789abcdef"}

    def spawn_wait(out_fd):
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "true"], env, file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, out_fd, 1), (os.POSIX_SPAWN_DUP2, out_fd, 2)], setsid=True)
        os.waitpid(pid, 0)

    def variant(name, protocol, sync, batch=1):
        d = tempfile.mkdtemp(prefix="queuectl-floor-")
        try:
            for sub in ("pending", "processing", "done", "tmp"):
                os.mkdir(os.path.join(d, sub))
            for i in range(n):
                with open(os.path.join(d, "pending", f"{i:08d}.json"), "w") as f:
                    json.dump(dict(job, id=str(i)), f, separators=(",", ":"))
            devnull = os.open(os.devnull, os.O_WRONLY)
            staged = []

            def commit(items):
                fds = []
                for tmp, data, _, _ in items:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    os.write(fd, data)
                    fds.append(fd)
                for fd in fds:
                    if sync:
                        os.fsync(fd)
                    os.close(fd)
                for tmp, _, dst, _ in items:
                    os.rename(tmp, dst)
                if sync:
                    dfd = os.open(os.path.join(d, "done"), os.O_RDONLY)
                    os.fsync(dfd)
                    os.close(dfd)
                for _, _, _, claim in items:
                    os.unlink(claim)

            t0, c0 = time.perf_counter(), os.times()
            for i in range(n):
                if not protocol:
                    spawn_wait(devnull)
                    continue
                src, claim = os.path.join(d, "pending", f"{i:08d}.json"), os.path.join(d, "processing", f"{i:08d}@w.json")
                os.rename(src, claim)
                with open(claim, "rb") as f:
                    doc = json.loads(f.read())
                spawn_wait(devnull)
                doc.update(state="completed", attempts=1, exit_code=0, history=[{"attempt": 1, "exit_code": 0}])
                staged.append((os.path.join(d, "tmp", f"{i}.tmp"), json.dumps(doc, separators=(",", ":")).encode(), os.path.join(d, "done", f"{i}.json"), claim))
                if len(staged) >= batch:
                    commit(staged)
                    staged = []
            if staged:
                commit(staged)
            wall, c1 = time.perf_counter() - t0, os.times()
            cpu = sum(c1[:4]) - sum(c0[:4])
            print(f"  {name:<62} {wall / n * 1000:6.3f} ms wall/job  {cpu / n * 1000:6.3f} ms CPU/job")
            os.close(devnull)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    print(f"the protocol's floor in plain Python, {n} sequential `true` jobs, one process:")
    variant("spawn + wait only (no queue)", False, False)
    variant("+ claim, read, parse, write result, rename, unlink; no fsync", True, False)
    variant("+ fsync of each result and of done/, per job", True, True)
    variant("+ the same fsyncs, grouped 64 jobs at a time", True, True, batch=64)


def _fork_exec():
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/sh", ["/bin/sh", "-c", "true"])
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("cprofile", "cpu", "steps", "strace", "spawn", "floor"))
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", help="cprofile: also dump the stats to this file")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    {"cprofile": cmd_cprofile, "cpu": cmd_cpu, "steps": cmd_steps, "strace": cmd_strace, "spawn": cmd_spawn, "floor": cmd_floor}[args.what](args)


if __name__ == "__main__":
    main()
