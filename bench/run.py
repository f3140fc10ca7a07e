#!/usr/bin/env python3
"""queuectl benchmark (issue 4): drain rate against xargs, pick-up latency, enqueue cost, backlog,
worker memory. Standard library only; it drives the installed `queuectl` console script.

    pip install .            # or pip install -e .
    python bench/run.py      # full run, a few minutes
    python bench/run.py --quick            # under a minute, smaller sizes (the table says which)
    python bench/run.py --json out.json    # also write every sample as JSON ('-': JSON on stdout)

Every measurement runs in a fresh temporary spool, and every ratio compares two things measured in
the same run (interleaved, best of R), so the ratios hold on a noisy shared machine. Progress goes
to stderr; the table (Markdown) goes to stdout. Run one benchmark at a time.
"""

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

LATENCY_CMD = "date +%s.%N"  # the job's first (and only) instruction prints the time: no Python


# -- finding what to run ------------------------------------------------------------------------


def find_queuectl():
    here = os.path.join(os.path.dirname(sys.executable), "queuectl")
    if os.path.exists(here):
        return here
    found = shutil.which("queuectl")
    if not found:
        sys.exit("bench: the queuectl console script is not installed (pip install .)")
    return found


def script_interpreter(script):
    """The Python that the console script runs on (its #! line), else ours."""
    try:
        with open(script, "rb") as f:
            first = f.readline().decode("utf-8", "replace").strip()
        if first.startswith("#!"):
            parts = first[2:].split()
            if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
                found = shutil.which(parts[1])
                if found:
                    return found
            elif parts and os.path.exists(parts[0]):
                return parts[0]
    except OSError:
        pass
    return sys.executable


# -- small helpers --------------------------------------------------------------------------------


def children_cpu():
    """CPU seconds (user+sys) of every reaped descendant so far (RUSAGE_CHILDREN)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def system_busy():
    """CPU seconds all CPUs spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Noise:
    """How much CPU other processes took while we measured: (all busy CPU - our children's CPU)
    / (wall time x CPUs). Near 0 on a quiet machine; the ratios are fair only when it is low."""

    def __enter__(self):
        self.busy0, self.cpu0, self.t0 = system_busy(), children_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy1, cpu1, t1 = system_busy(), children_cpu(), time.perf_counter()
        if self.busy0 is None or busy1 is None or t1 <= self.t0:
            self.share = None
        else:
            self.share = max(0.0, ((busy1 - self.busy0) - (cpu1 - self.cpu0)) / ((t1 - self.t0) * (os.cpu_count() or 1)))
        return False


def log(msg):
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def parse_iso(text):
    """'2026-11-28T00:41:34.442547Z' -> epoch seconds."""
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    return datetime.fromisoformat(s).timestamp()


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_status_kb(pid, keys=("VmHWM", "VmRSS")):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def read_smaps_rollup_kb(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Pss", "Private_Clean", "Private_Dirty", "Rss"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    kids = []  # no CONFIG_PROC_CHILDREN: scan /proc for the parent pid
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            if int(data[data.rindex(b")") + 2 :].split()[1]) == pid:
                kids.append(int(name))
        except (OSError, ValueError):
            continue
    return kids


class MemSampler(threading.Thread):
    """Polls the supervisor's children (the workers): VmHWM (peak RSS), and PSS now and then."""

    def __init__(self, sup_pid, interval=0.02):
        super().__init__(daemon=True)
        self.sup_pid = sup_pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.workers = {}  # pid -> {"hwm_kb", "rss_kb", "pss_kb", "private_kb"}
        self.supervisor_hwm_kb = 0

    def run(self):
        n = 0
        while not self.stop_event.is_set():
            for pid in children_of(self.sup_pid):
                st = read_status_kb(pid)
                if not st:
                    continue
                w = self.workers.setdefault(pid, {"hwm_kb": 0, "rss_kb": 0, "pss_kb": 0, "private_kb": 0})
                w["hwm_kb"] = max(w["hwm_kb"], st.get("VmHWM", 0))
                w["rss_kb"] = max(w["rss_kb"], st.get("VmRSS", 0))
                if n % 10 == 0:
                    sm = read_smaps_rollup_kb(pid)
                    w["pss_kb"] = max(w["pss_kb"], sm.get("Pss", 0))
                    w["private_kb"] = max(w["private_kb"], sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0))
            self.supervisor_hwm_kb = max(self.supervisor_hwm_kb, read_status_kb(self.sup_pid).get("VmHWM", 0))
            n += 1
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join(timeout=5)


# -- the context: paths, temp spools, processes ----------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.q = find_queuectl()
        self.py = script_interpreter(self.q)
        self.tmp_base = args.tmpdir or tempfile.gettempdir()
        self.results = {}
        self.procs = []
        self.warm = False
        self.to_remove = []
        self.rng = random.Random(4)
        # PYTHONDONTWRITEBYTECODE (set in some sandboxes) would make every `queuectl` call compile
        # an editable install's modules from source, which no `pip install .` user sees: drop it so
        # the warm-up runs cache the bytecode as usual.
        self.dropped_env = [k for k in ("PYTHONDONTWRITEBYTECODE",) if k in os.environ]
        self.env = {k: v for k, v in os.environ.items() if k not in ("QUEUECTL_SPOOL", *self.dropped_env)}

    # temp spools

    def new_dir(self, tag):
        d = tempfile.mkdtemp(prefix=f"queuectl-bench-{tag}-", dir=self.tmp_base)
        return d

    def cleanup(self, d):
        """Deferred to the end of the run: on ext4 without a journal, creating a file scans past
        every inode freed in the last minute or more (ext4 recently_deleted()), so removing one
        measurement's spool would slow the file creations of the next."""
        self.to_remove.append(d)

    def remove_all(self):
        if self.args.keep:
            for d in self.to_remove:
                log(f"kept {d}")
        else:
            for d in self.to_remove:
                shutil.rmtree(d, ignore_errors=True)
        self.to_remove = []

    def qc(self, spool, *args):
        return [self.q, "--spool", spool, *args]

    def run_qc(self, spool, *args, input=None, check=True, capture=True, timeout=600):
        p = subprocess.run(
            self.qc(spool, *args),
            input=input,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"queuectl {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
        return p

    def popen(self, argv, **kw):
        p = subprocess.Popen(argv, env=self.env, **kw)
        self.procs.append(p)
        return p

    def stop_proc(self, p, timeout=30):
        """SIGTERM a `worker start` supervisor, wait; kill it and its workers if it hangs."""
        if p.poll() is None:
            kids = children_of(p.pid)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} did not stop within {timeout} s: killing it and its workers {kids}")
                for pid in kids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def kill_all(self):
        for p in list(self.procs):
            try:
                self.stop_proc(p, timeout=10)
            except Exception:
                pass

    # job helpers

    def enqueue_lines(self, spool, commands):
        """`queuectl enqueue -` of one job per command; returns (seconds, number of ids printed)."""
        data = "".join(json.dumps({"command": c}) + "\n" for c in commands).encode()
        t0 = time.perf_counter()
        p = self.run_qc(spool, "enqueue", "-", input=data)
        dt = time.perf_counter() - t0
        n = sum(1 for line in p.stdout.splitlines() if line.strip())
        if n != len(commands):
            raise RuntimeError(f"enqueue - printed {n} ids for {len(commands)} jobs: {p.stderr.decode(errors='replace')[-2000:]}")
        return dt, n

    @staticmethod
    def read_done(spool):
        """[(started, finished, created)] of every job in done/ (its last attempt)."""
        out = []
        folder = os.path.join(spool, "done")
        for name in os.listdir(folder):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                job = json.loads(f.read())
            h = job["history"][-1]
            out.append((parse_iso(h["started_at"]), parse_iso(h["finished_at"]), parse_iso(job["created_at"])))
        return out


# -- 1. drain -----------------------------------------------------------------------------------


PY_LOOP = r"""
import subprocess, sys
with open(sys.argv[1], "rb") as f:
    cmds = f.read().decode().split("\0")[:-1]
i, w = int(sys.argv[2]), int(sys.argv[3])
for c in cmds[i::w]:
    subprocess.run(c, shell=True)
"""


def drain_queuectl(b, cmds, workers, sample_mem=False):
    d = b.new_dir("drain")
    try:
        spool = os.path.join(d, "spool")
        b.run_qc(spool, "init")
        b.enqueue_lines(spool, cmds)
        with open(os.path.join(d, "worker.stderr"), "wb") as err:
            noise = Noise().__enter__()
            cpu0 = children_cpu()
            t0 = time.time()
            p = b.popen(b.qc(spool, "worker", "start", "--burst", "--count", str(workers)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            sampler = MemSampler(p.pid) if sample_mem else None
            if sampler:
                sampler.start()
            try:
                p.wait(timeout=max(120, len(cmds)))
            except subprocess.TimeoutExpired:
                b.stop_proc(p)
                raise RuntimeError("worker start --burst did not finish")
            t1 = time.time()
            cpu = children_cpu() - cpu0
            noise.__exit__(None, None, None)
            if sampler:
                sampler.stop()
            if p in b.procs:
                b.procs.remove(p)
        done = b.read_done(spool)
        if len(done) != len(cmds) or p.returncode != 0:
            with open(os.path.join(d, "worker.stderr"), "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"drain: {len(done)} of {len(cmds)} jobs in done/, exit {p.returncode}\n{tail}")
        first_start = min(s for s, _, _ in done)
        last_finish = max(f for _, f, _ in done)
        out = {
            "to_last_finish_s": last_finish - t0,
            "wall_s": t1 - t0,
            "to_first_start_s": first_start - t0,
            "steady_s": last_finish - first_start,
            "cpu_ms_per_job": cpu / len(cmds) * 1000,
            "other_cpu_share": noise.share,
        }
        if sampler:
            out["memory"] = {"workers": sampler.workers, "supervisor_hwm_kb": sampler.supervisor_hwm_kb}
        return out
    finally:
        b.cleanup(d)


def drain_xargs(b, cmds, workers):
    d = b.new_dir("xargs")
    try:
        path = os.path.join(d, "cmds")
        with open(path, "wb") as f:
            f.write("".join(c + "\0" for c in cmds).encode())
        with open(path, "rb") as f:
            with Noise() as noise:
                cpu0 = children_cpu()
                t0 = time.perf_counter()
                p = subprocess.run(["xargs", "-0", "-P", str(workers), "-n1", "sh", "-c"], stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                dt = time.perf_counter() - t0
                cpu = children_cpu() - cpu0
        if p.returncode != 0:
            raise RuntimeError(f"xargs exited {p.returncode}")
        return {"wall_s": dt, "cpu_ms_per_job": cpu / len(cmds) * 1000, "other_cpu_share": noise.share}
    finally:
        b.cleanup(d)


def drain_pyloop(b, cmds, workers):
    d = b.new_dir("pyloop")
    try:
        path = os.path.join(d, "cmds")
        with open(path, "wb") as f:
            f.write("".join(c + "\0" for c in cmds).encode())
        with Noise() as noise:
            cpu0 = children_cpu()
            t0 = time.perf_counter()
            ps = [subprocess.Popen([b.py, "-c", PY_LOOP, path, str(i), str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(workers)]
            codes = [p.wait() for p in ps]
            dt = time.perf_counter() - t0
            cpu = children_cpu() - cpu0
        if any(codes):
            raise RuntimeError(f"python loop exited {codes}")
        return {"wall_s": dt, "cpu_ms_per_job": cpu / len(cmds) * 1000, "other_cpu_share": noise.share}
    finally:
        b.cleanup(d)


def bench_drain(b, command, n, workers, repeats):
    cmds = [command] * n
    log(f"drain: {n} x {command!r}, {workers} workers, best of {repeats} (interleaved) ...")
    # warm-up: page cache, .pyc files, the binaries (not recorded)
    if not b.warm:
        warm = [command] * min(n, 100)
        drain_queuectl(b, warm, workers)
        drain_xargs(b, warm, workers)
        drain_pyloop(b, warm, workers)
        b.warm = True
    methods = [("queuectl", drain_queuectl), ("xargs", drain_xargs), ("pyloop", drain_pyloop)]
    samples = {name: [] for name, _ in methods}
    for r in range(repeats):
        order = methods[r % 3 :] + methods[: r % 3]
        for name, fn in order:
            res = fn(b, cmds, workers)
            samples[name].append(res)
            log(f"  round {r + 1}: {name:<8} " + ", ".join(f"{k} {v:.3f}" for k, v in res.items() if isinstance(v, float)))
    best_q = min(s["to_last_finish_s"] for s in samples["queuectl"])
    best_q_wall = min(s["wall_s"] for s in samples["queuectl"])
    best_x = min(s["wall_s"] for s in samples["xargs"])
    best_p = min(s["wall_s"] for s in samples["pyloop"])
    paired = [n / q["to_last_finish_s"] / (n / x["wall_s"]) for q, x in zip(samples["queuectl"], samples["xargs"])]
    return {
        "command": command,
        "n": n,
        "workers": workers,
        "repeats": repeats,
        "samples": samples,
        "queuectl_rate": n / best_q,
        "queuectl_wall_rate": n / best_q_wall,
        "queuectl_steady_rate": max(n / s["steady_s"] for s in samples["queuectl"]),
        "queuectl_startup_s": min(s["to_first_start_s"] for s in samples["queuectl"]),
        "xargs_rate": n / best_x,
        "pyloop_rate": n / best_p,
        "ratio": best_x / best_q,
        "ratio_wall": best_x / best_q_wall,
        "ratio_pyloop": best_x / best_p,
        "ratio_paired_median": statistics.median(paired),
        "cpu_ms_per_job": {name: statistics.median(x["cpu_ms_per_job"] for x in v) for name, v in samples.items()},
        "other_cpu_share": statistics.median(x["other_cpu_share"] for v in samples.values() for x in v if x.get("other_cpu_share") is not None) if any(x.get("other_cpu_share") is not None for v in samples.values() for x in v) else None,
    }


# -- 2. pick-up latency ---------------------------------------------------------------------------


def wait_for(cond, timeout, interval=0.002):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            return None
        time.sleep(interval)


class RenameWatcher(threading.Thread):
    """Timestamps renames into a folder as inotify reports them (Linux, through ctypes), so that
    the latency of `queuectl enqueue` can be taken from its rename into pending/, which happens
    inside the CLI. A blocked reader thread wakes within microseconds of the rename on an idle
    CPU; the time it records is never before the rename."""

    IN_MOVED_TO = 0x80

    def __init__(self, folder):
        super().__init__(daemon=True)
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_MOVED_TO) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.seen = {}  # name -> time.time() when the event was read

    def run(self):
        import struct

        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            now = time.time()
            i = 0
            while i + 16 <= len(data):
                _, _, _, n = struct.unpack_from("iIII", data, i)
                name = data[i + 16 : i + 16 + n].split(b"\0", 1)[0].decode(errors="replace")
                self.seen.setdefault(name, now)
                i += 16 + n

    def close(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


def bench_latency(b, n_each, workers):
    log(f"pick-up latency: {n_each} drop-ins and {n_each} enqueues, one at a time, {workers} idle workers ...")
    d = b.new_dir("latency")
    spool = os.path.join(d, "spool")
    p = None
    try:
        b.run_qc(spool, "init")
        err = open(os.path.join(d, "worker.stderr"), "wb")
        p = b.popen(b.qc(spool, "worker", "start", "--count", str(workers)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        wdir = os.path.join(spool, "workers")
        ok = wait_for(lambda: len([n for n in os.listdir(wdir) if n.endswith(".json") and not n.startswith(".")]) >= workers or p.poll() is not None, 30, 0.02)
        if not ok or p.poll() is not None:
            raise RuntimeError("workers did not start")
        time.sleep(0.5)  # let them settle into their idle wait
        try:
            watcher = RenameWatcher(os.path.join(spool, "pending"))
            watcher.start()
        except (OSError, AttributeError) as e:
            log(f"  no inotify ({e}): enqueue latency is taken from created_at instead of the rename")
            watcher = None
        lat = {"dropin": [], "enqueue": [], "enqueue_from_created_at": [], "enqueue_from_call": [], "spawn_floor": []}
        floor_dir = os.path.join(d, "floor")
        os.mkdir(floor_dir)
        for i in range(2 * n_each):
            kind = "dropin" if i % 2 == 0 else "enqueue"
            jid = f"lat-{kind}-{i}"
            doc = json.dumps({"id": jid, "command": LATENCY_CMD})
            if kind == "dropin":
                tmp = os.path.join(spool, "tmp", f"bench.{os.getpid()}.{i}.json")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, doc.encode())
                os.fsync(fd)
                os.close(fd)
                t_rename = time.time()
                os.rename(tmp, os.path.join(spool, "pending", f"{jid}.json"))
                fsync_dir(os.path.join(spool, "pending"))
            else:
                t_call = time.time()
                b.run_qc(spool, "enqueue", doc)
            done_path = os.path.join(spool, "done", f"{jid}.json")
            if not wait_for(lambda: os.path.exists(done_path), 20):
                raise RuntimeError(f"job {jid} did not finish within 20 s")
            ts = float(open(os.path.join(spool, "logs", f"{jid}.1.log")).read().split()[0])
            if kind == "dropin":
                lat["dropin"].append(ts - t_rename)
            else:
                with open(done_path) as f:
                    created = parse_iso(json.load(f)["created_at"])
                lat["enqueue_from_created_at"].append(ts - created)
                seen = [t for name, t in list(watcher.seen.items()) if name.endswith(f"_{jid}.json")] if watcher else []
                lat["enqueue"].append(ts - (seen[0] if seen else created))
                lat["enqueue_from_call"].append(ts - t_call)
                # reference, same moment: the same command started directly with posix_spawn
                out = os.path.join(floor_dir, f"{i}.out")
                ofd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
                t_spawn = time.time()
                pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", LATENCY_CMD], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, ofd, 1)])
                os.waitpid(pid, 0)
                os.close(ofd)
                lat["spawn_floor"].append(float(open(out).read().split()[0]) - t_spawn)
            time.sleep(b.rng.uniform(0.03, 0.07))  # the workers go back to their idle wait
        if watcher:
            watcher.close()
        out = {"n_each": n_each, "workers": workers, "samples_s": lat, "enqueue_rename_from": "inotify" if watcher else "created_at"}
        for k, v in lat.items():
            out[k] = {"p50_ms": percentile(v, 50) * 1000, "p99_ms": percentile(v, 99) * 1000, "max_ms": max(v) * 1000}
        log("  " + "; ".join(f"{k} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms" for k, v in out.items() if isinstance(v, dict) and "p50_ms" in v))
        return out
    finally:
        if p is not None:
            b.stop_proc(p)
        b.cleanup(d)


# -- 3. enqueue ---------------------------------------------------------------------------------------


def bench_enqueue(b, runs, bulk_n):
    log(f"enqueue: one call x {runs} against python -c 'import click' (interleaved); enqueue - of {bulk_n} jobs ...")
    d = b.new_dir("enqueue")
    try:
        spool = os.path.join(d, "spool")
        b.run_qc(spool, "init")
        one = json.dumps({"command": "true"})

        def t_enqueue():
            t0 = time.perf_counter()
            b.run_qc(spool, "enqueue", one)
            return time.perf_counter() - t0

        def t_py(code):
            t0 = time.perf_counter()
            subprocess.run([b.py, "-c", code], check=True, env=b.env)
            return time.perf_counter() - t0

        for _ in range(2):  # warm-up
            t_enqueue(), t_py("import click"), t_py("pass")
        samples = {"enqueue": [], "import_click": [], "python_pass": []}
        for i in range(runs):
            steps = [("enqueue", t_enqueue), ("import_click", lambda: t_py("import click")), ("python_pass", lambda: t_py("pass"))]
            if i % 2:
                steps.reverse()
            for name, fn in steps:
                samples[name].append(fn())
        med = {k: statistics.median(v) for k, v in samples.items()}
    finally:
        b.cleanup(d)
    d = b.new_dir("bulk")
    try:
        spool = os.path.join(d, "spool")
        b.run_qc(spool, "init")
        dt, n = b.enqueue_lines(spool, ["true"] * bulk_n)
        pending = len(os.listdir(os.path.join(spool, "pending")))
        if pending != bulk_n:
            raise RuntimeError(f"enqueue -: {pending} files in pending/ for {bulk_n} jobs")
    finally:
        b.cleanup(d)
    out = {
        "runs": runs,
        "samples_s": samples,
        "enqueue_ms": med["enqueue"] * 1000,
        "import_click_ms": med["import_click"] * 1000,
        "python_pass_ms": med["python_pass"] * 1000,
        "ratio": med["enqueue"] / med["import_click"],
        "bulk_n": bulk_n,
        "bulk_s": dt,
        "bulk_rate": bulk_n / dt,
    }
    log(f"  enqueue {out['enqueue_ms']:.1f} ms, import click {out['import_click_ms']:.1f} ms ({out['ratio']:.2f}x); enqueue - {out['bulk_rate']:.0f} jobs/s")
    return out


# -- 4. backlog ---------------------------------------------------------------------------------------


def backlog_case(b, waiting, measure, workers):
    """Drain the first MEASURE jobs of WAITING `true` jobs with long-running workers."""
    d = b.new_dir(f"backlog{waiting}")
    p = None
    try:
        spool = os.path.join(d, "spool")
        b.run_qc(spool, "init")
        enq_s, _ = b.enqueue_lines(spool, ["true"] * waiting)
        done_dir = os.path.join(spool, "done")
        err = open(os.path.join(d, "worker.stderr"), "wb")
        t0 = time.time()
        p = b.popen(b.qc(spool, "worker", "start", "--count", str(workers)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        timeout = 60 + measure / 50 + waiting / 1000
        ok = wait_for(lambda: len(os.listdir(done_dir)) >= measure or p.poll() is not None, timeout, 0.02)
        b.stop_proc(p)
        p = None
        done = sorted(f for _, f, _ in b.read_done(spool))
        if not ok or len(done) < measure:
            raise RuntimeError(f"backlog {waiting}: only {len(done)} of {measure} jobs done within {timeout:.0f} s")
        done = done[:measure]
        k = measure // 10  # the steady window leaves out the first 10% (start-up)
        return {
            "waiting": waiting,
            "measured_jobs": measure,
            "enqueue_s": enq_s,
            "enqueue_rate": waiting / enq_s,
            "first_job_s": done[0] - t0,
            "rate": measure / (done[-1] - t0),
            "steady_rate": (measure - 1 - k) / (done[-1] - done[k]),
        }
    finally:
        if p is not None:
            b.stop_proc(p)
        b.cleanup(d)


def bench_backlog(b, big, small, measure, workers, bracket=True):
    log(f"backlog: {big} waiting against {small} waiting, first {measure} / all {small} jobs, small-big{'-small' if bracket else ''} ...")
    s1 = backlog_case(b, small, small, workers)
    log("  small: " + ", ".join(f"{k} {v:.3g}" for k, v in s1.items()))
    bg = backlog_case(b, big, measure, workers)
    log("  big:   " + ", ".join(f"{k} {v:.3g}" for k, v in bg.items()))
    smalls = [s1]
    if bracket:
        s2 = backlog_case(b, small, small, workers)
        log("  small: " + ", ".join(f"{k} {v:.3g}" for k, v in s2.items()))
        smalls.append(s2)
    small_steady = statistics.mean(s["steady_rate"] for s in smalls)
    small_rate = statistics.mean(s["rate"] for s in smalls)
    return {
        "big": bg,
        "small": smalls,
        "ratio_steady": bg["steady_rate"] / small_steady,
        "ratio_from_start": bg["rate"] / small_rate,
        "small_steady_rate": small_steady,
        "small_rate": small_rate,
    }


def make_done_jobs(spool, n):
    """N completed jobs written straight into done/ (and ids/), in the documented format."""
    base = time.time() - n / 1000.0 - 60
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    done, ids = os.path.join(spool, "done"), os.path.join(spool, "ids")
    for i in range(n):
        jid = f"bench-{i:07d}"
        token = os.urandom(8).hex()
        c = base + i / 1000.0
        job = {
            "command": "true",
            "id": jid,
            "max_retries": 3,
            "priority": 0,
            "state": "completed",
            "attempts": 1,
            "created_at": iso(c),
            "updated_at": iso(c + 0.01),
            "exit_code": 0,
            "last_error": None,
            "history": [
                {"attempt": 1, "started_at": iso(c + 0.005), "finished_at": iso(c + 0.01), "exit_code": 0, "error": None, "worker": "bench.1.1", "log": f"{jid}.1.log"}
            ],
            "token": token,
        }
        with open(os.path.join(done, jid + ".json"), "wb") as f:
            f.write((json.dumps(job, indent=1) + "\n").encode())
        with open(os.path.join(ids, jid), "wb") as f:
            f.write(token.encode())


def bench_views(b, n_done, runs):
    log(f"status and list --limit 20 with {n_done} jobs in done/ (median of {runs}) ...")
    d = b.new_dir("views")
    try:
        spool = os.path.join(d, "spool")
        b.run_qc(spool, "init")
        make_done_jobs(spool, n_done)
        res = {"n_done": n_done, "runs": runs, "status_s": [], "list_s": []}
        b.run_qc(spool, "status")  # warm-up
        for _ in range(runs):
            for name, args in (("status_s", ("status",)), ("list_s", ("list", "--limit", "20"))):
                t0 = time.perf_counter()
                p = b.run_qc(spool, *args)
                res[name].append(time.perf_counter() - t0)
                if name == "status_s" and str(n_done) not in p.stdout.decode():
                    raise RuntimeError(f"status does not show {n_done} completed jobs: {p.stdout.decode()!r}")
                if name == "list_s" and len(p.stdout.decode().splitlines()) != 20:
                    raise RuntimeError(f"list --limit 20 printed {len(p.stdout.decode().splitlines())} lines")
        res["status_ms"] = statistics.median(res["status_s"]) * 1000
        res["list_ms"] = statistics.median(res["list_s"]) * 1000
        log(f"  status {res['status_ms']:.0f} ms, list --limit 20 {res['list_ms']:.0f} ms")
        return res
    finally:
        b.cleanup(d)


# -- 5. memory ------------------------------------------------------------------------------------------


def bench_memory(b, n, workers):
    log(f"worker memory: a drain of {n} x 'true' with {workers} workers, sampling /proc/PID/status of the workers ...")
    res = drain_queuectl(b, ["true"] * n, workers, sample_mem=True)
    mem = res["memory"]
    ws = list(mem["workers"].values())
    if not ws:
        raise RuntimeError("no worker process was sampled")
    out = {
        "n": n,
        "workers_sampled": len(ws),
        "peak_rss_mb": max(w["hwm_kb"] for w in ws) / 1024,
        "peak_pss_mb": max(w["pss_kb"] for w in ws) / 1024,
        "peak_private_mb": max(w["private_kb"] for w in ws) / 1024,
        "supervisor_peak_rss_mb": mem["supervisor_hwm_kb"] / 1024,
        "per_worker": ws,
    }
    log(f"  worker peak RSS {out['peak_rss_mb']:.1f} MB (PSS {out['peak_pss_mb']:.1f} MB, private {out['peak_private_mb']:.1f} MB)")
    return out


# -- machine, table -------------------------------------------------------------------------------------


def machine_info(b):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fs, best = "?", ""
    try:
        real = os.path.realpath(b.tmp_base)
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fs = mnt, f"{parts[2]} on {parts[0]} ({mnt}, {parts[3].split(',')[0]})"
    except OSError:
        pass
    if fs.startswith("ext4 on /dev/"):
        dev = fs.split()[2][len("/dev/"):]
        journaled = any(n.startswith(dev + "-") for n in (os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []))
        fs = fs.replace("ext4", "ext4 with a journal" if journaled else "ext4 WITHOUT a journal", 1)
    pyver = subprocess.run([b.py, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True).stdout.strip()
    ver = subprocess.run([b.q, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": pyver,
        "queuectl": ver,
        "queuectl_script": b.q,
        "tmpdir": b.tmp_base,
        "filesystem": fs,
        "env_dropped": b.dropped_env,
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
    }


def yesno(ok):
    return "met" if ok else "**not met**"


def build_table(r, quick):
    rows = []  # (measurement, queuectl, reference, ratio, target, met)
    for key, target in (("drain_true", 0.8), ("drain_sleep", 0.97)):
        if key not in r:
            continue
        d = r[key]
        what = f"`{d['command']}` x{d['n']}, W={d['workers']}"
        ref = f"xargs -P{d['workers']}: {d['xargs_rate']:.0f} jobs/s"
        cpu = d["cpu_ms_per_job"]
        rows.append((f"1 drain {what}: start to last job finished", f"{d['queuectl_rate']:.0f} jobs/s", ref, f"{d['ratio']:.2f}x", f">= {target}x", yesno(d["ratio"] >= target)))
        rows.append((f"1 drain {what}: CPU per job (all processes of the run)", f"{cpu['queuectl']:.2f} ms", f"xargs: {cpu['xargs']:.2f} ms", f"{cpu['xargs'] / cpu['queuectl']:.2f}x", "-", "-"))
        rows.append((f"1 drain {what}: first job started to last finished", f"{d['queuectl_steady_rate']:.0f} jobs/s", ref, f"{d['queuectl_steady_rate'] / d['xargs_rate']:.2f}x", "-", "-"))
        rows.append((f"1 drain {what}: command wall time", f"{d['queuectl_wall_rate']:.0f} jobs/s", ref, f"{d['ratio_wall']:.2f}x", "-", "-"))
        rows.append((f"1 drain {what}: Python subprocess.run loop x{d['workers']}", f"{d['pyloop_rate']:.0f} jobs/s", ref, f"{d['ratio_pyloop']:.2f}x", "(reference)", "-"))
    if "latency" in r:
        L = r["latency"]
        floor = f"posix_spawn sh: p50 {L['spawn_floor']['p50_ms']:.1f} / p99 {L['spawn_floor']['p99_ms']:.1f} ms"
        for kind, label in (("dropin", "drop-in"), ("enqueue", "`enqueue`")):
            v = L[kind]
            rows.append((f"2 pick-up latency, {label}, p50 (n={L['n_each']})", f"{v['p50_ms']:.1f} ms", floor, "-", "< 10 ms", yesno(v["p50_ms"] < 10)))
            rows.append((f"2 pick-up latency, {label}, p99 (n={L['n_each']})", f"{v['p99_ms']:.1f} ms", floor, "-", "< 100 ms", yesno(v["p99_ms"] < 100)))
    if "enqueue" in r:
        e = r["enqueue"]
        rows.append((f"3 one `enqueue` call, median of {e['runs']}", f"{e['enqueue_ms']:.0f} ms", f"python -c 'import click': {e['import_click_ms']:.0f} ms", f"{e['ratio']:.2f}x", "<= 1.3x", yesno(e["ratio"] <= 1.3)))
        rows.append((f"3 `enqueue -` of {e['bulk_n']} jobs", f"{e['bulk_rate']:.0f} jobs/s", "-", "-", ">= 3000 jobs/s", yesno(e["bulk_rate"] >= 3000)))
    if "backlog" in r:
        k = r["backlog"]
        bg = k["big"]
        note = " (--quick size)" if quick else ""
        rows.append((f"4 drain with {bg['waiting']} waiting{note}, steady rate", f"{bg['steady_rate']:.0f} jobs/s", f"{k['small'][0]['waiting']} waiting: {k['small_steady_rate']:.0f} jobs/s", f"{k['ratio_steady']:.2f}x", ">= 0.8x", yesno(k["ratio_steady"] >= 0.8)))
        rows.append((f"4 drain with {bg['waiting']} waiting{note}, first {bg['measured_jobs']} jobs incl. start-up", f"{bg['rate']:.0f} jobs/s (first job after {bg['first_job_s']:.2f} s)", f"{k['small'][0]['waiting']} waiting: {k['small_rate']:.0f} jobs/s (first after {k['small'][0]['first_job_s']:.2f} s)", f"{k['ratio_from_start']:.2f}x", "-", "-"))
        rows.append((f"4 `enqueue -` of {bg['waiting']} jobs (backlog set-up)", f"{bg['enqueue_rate']:.0f} jobs/s", "-", "-", ">= 3000 jobs/s", yesno(bg["enqueue_rate"] >= 3000)))
    if "views" in r:
        v = r["views"]
        note = " (--quick size)" if quick else ""
        rows.append((f"4 `status` with {v['n_done']} jobs in done/{note}", f"{v['status_ms']:.0f} ms", "-", "-", "< 1000 ms", yesno(v["status_ms"] < 1000)))
        rows.append((f"4 `list --limit 20` with {v['n_done']} jobs in done/{note}", f"{v['list_ms']:.0f} ms", "-", "-", "(none)", "-"))
    if "memory" in r:
        m = r["memory"]
        rows.append((f"5 worker peak RSS (VmHWM) during a drain of {m['n']}", f"{m['peak_rss_mb']:.1f} MB", f"PSS {m['peak_pss_mb']:.1f} MB, private {m['peak_private_mb']:.1f} MB", "-", "< 30 MB", yesno(m["peak_rss_mb"] < 30)))
    if "scale" in r:
        import scale

        rows += scale.rows(r["scale"])
    head = ("measurement", "queuectl", "reference (same run)", "ratio", "target (issue 4; 11: issue 11)", "")
    widths = [max(len(str(row[i])) for row in rows + [head]) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------


SECTIONS = ("drain", "sleep", "latency", "enqueue", "backlog", "views", "memory", "scale")


def main(argv=None):
    ap = argparse.ArgumentParser(description="queuectl benchmark (issue 4)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write the results as JSON to FILE ('-' or no value: stdout, and the table goes to stderr)")
    ap.add_argument("-n", type=int, help="jobs per drain (default 2000; quick 400)")
    ap.add_argument("-w", "--workers", type=int, default=2, help="workers W (default 2)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds per drain, best counts (default 3; quick 2)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)")
    ap.add_argument("--tmpdir", help="where the temporary spools go (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary spools")
    args = ap.parse_args(argv)

    q = args.quick
    n = args.n or (400 if q else 2000)
    repeats = args.repeats or (2 if q else 3)
    sleep_n = args.n or (150 if q else 2000)
    sleep_repeats = args.repeats or (1 if q else 3)
    lat_n = 30 if q else 200
    enq_runs = 8 if q else 20
    bulk_n = 10000
    big = 20000 if q else 100000
    small = 1000
    measure = 1000 if q else 2000
    n_done = 20000 if q else 100000
    sections = args.only or list(SECTIONS)

    b = Bench(args)
    t_start = time.time()
    results = {"mode": "quick" if q else "full", "argv": sys.argv[1:], "machine": machine_info(b)}
    m = results["machine"]
    log(f"queuectl {m['queuectl']} ({b.q}), Python {m['python']}, {m['nproc']} CPUs, spools in {b.tmp_base} ({m['filesystem']})")
    try:
        if "drain" in sections:
            results["drain_true"] = bench_drain(b, "true", n, args.workers, repeats)
        if "sleep" in sections:
            results["drain_sleep"] = bench_drain(b, "sleep 0.01", sleep_n, args.workers, sleep_repeats)
        if "latency" in sections:
            results["latency"] = bench_latency(b, lat_n, args.workers)
        if "enqueue" in sections:
            results["enqueue"] = bench_enqueue(b, enq_runs, bulk_n)
        if "backlog" in sections:
            results["backlog"] = bench_backlog(b, big, small, measure, args.workers, bracket=not q)
        if "views" in sections:
            results["views"] = bench_views(b, n_done, 2 if q else 3)
        if "memory" in sections:
            results["memory"] = bench_memory(b, min(n, 200) if q else n, args.workers)
        if "scale" in sections:
            import scale  # bench/scale.py: issue 11's goals, each a ratio within this run

            results["scale"] = scale.bench_scale(b, q)
    except KeyboardInterrupt:
        log("interrupted")
        b.kill_all()
        return 130
    finally:
        b.kill_all()
        b.remove_all()
    results["elapsed_s"] = time.time() - t_start
    table = build_table(results, q)
    shares = [results[k]["other_cpu_share"] for k in ("drain_true", "drain_sleep") if k in results and results[k].get("other_cpu_share") is not None]
    noise = f"; other processes used {statistics.median(shares) * 100:.0f}% of the CPUs during the drains" if shares else ""
    header = (
        f"queuectl benchmark ({results['mode']} mode), {m['date']}: {m['nproc']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, {m['filesystem']}, {results['elapsed_s']:.0f} s{noise}"
    )
    results["table"] = table
    if args.json == "-":
        print(header + "\n\n" + table, file=sys.stderr)
        print(json.dumps(results, indent=1))
    else:
        print(header + "\n\n" + table)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
            log(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
