#!/usr/bin/env python3
"""queuectl's disk footprint per completed job (issue 10): run N `echo hi` jobs to completion on
a fresh spool with the installed queuectl, then count the disk blocks (as `du -sk` does: each
inode once, folders' own blocks included) and the inodes of each folder, per completed job.

    python bench/footprint.py                      # 2000 jobs, the `queuectl` on PATH
    python bench/footprint.py --jobs 5000 --json   # JSON on stdout
    python bench/footprint.py --cmd "python -m queuectl"   # another checkout: PYTHONPATH=/its/root

Standard library only. Prints a Markdown table on stdout; progress on stderr.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

FOLDERS = ("pending", "processing", "done", "dead", "rejected", "logs", "ids", "workers", "tmp")


def usage(path, seen):
    """(bytes of disk blocks, inodes) under PATH, the folder itself included; each inode counted
    once in SEEN (a hard link's second name costs nothing, as du counts it)."""
    total = inodes = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames + dirnames if not os.path.isdir(os.path.join(dirpath, n))]:
            st = os.lstat(name)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            inodes += 1
    return total, inodes


def measure(root):
    """{folder: (bytes, inodes)} and the whole spool's (each inode once across folders)."""
    out = {}
    for folder in FOLDERS:
        out[folder] = usage(os.path.join(root, folder), set())
    out["total"] = usage(root, set())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cmd", default="queuectl", help="how to run queuectl (default: queuectl)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cmd = shlex.split(args.cmd)
    with tempfile.TemporaryDirectory(prefix="qc-footprint.") as tmp:
        root = os.path.join(tmp, "spool")
        env = dict(os.environ, QUEUECTL_SPOOL=root)
        subprocess.run(cmd + ["init"], env=env, check=True, capture_output=True)
        lines = "".join('{"command": "echo hi"}\n' for _ in range(args.jobs))
        t = time.monotonic()
        subprocess.run(cmd + ["enqueue", "-"], env=env, input=lines, text=True, check=True, capture_output=True)
        print(f"enqueued {args.jobs} jobs in {time.monotonic() - t:.1f} s", file=sys.stderr)
        t = time.monotonic()
        subprocess.run(cmd + ["worker", "start", "--burst", "--count", str(args.workers)], env=env, check=True, capture_output=True)
        print(f"ran them in {time.monotonic() - t:.1f} s", file=sys.stderr)
        done = len(os.listdir(os.path.join(root, "done")))
        if done != args.jobs:
            sys.exit(f"footprint: {done} of {args.jobs} jobs completed")
        got = measure(root)
    per = {k: {"bytes": b / done, "inodes": i / done} for k, (b, i) in got.items()}
    if args.json:
        json.dump({"jobs": done, "cmd": args.cmd, "per_job": per, "raw": got}, sys.stdout, indent=2)
        print()
        return
    print(f"{done} completed `echo hi` jobs, {args.workers} workers, `{args.cmd}`\n")
    print("| folder | bytes per job | inodes per job | whole folder |")
    print("|---|---|---|---|")
    for k in ("done", "logs", "ids", "total"):
        b, i = got[k]
        print(f"| {k} | {per[k]['bytes']:.0f} | {per[k]['inodes']:.2f} | {b / 1024:.0f} KiB, {i} inodes |")


if __name__ == "__main__":
    main()
