#!/usr/bin/env python3
"""Add a job to a queuectl spool with the standard library only (no queuectl import).

Usage: examples/dropin.py 'echo hello' [--id ID] [--run-at 2026-12-01T03:00:00Z] [--priority 5]
"""

import argparse
import json
import os
import time


def spool_dir():
    if os.environ.get("QUEUECTL_SPOOL"):
        return os.environ["QUEUECTL_SPOOL"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "queuectl")


def drop_in(job, spool):
    """Write JOB to tmp/, fsync it, rename it into pending/, fsync pending/ (spool_layout.md).
    The name (the job's id when it gives none) is unique: the time in ns and the pid."""
    for d in ("tmp", "pending"):
        if not os.path.isdir(os.path.join(spool, d)):  # a typo or an unmounted disk: not a new spool
            raise SystemExit(f"dropin.py: no spool at {spool}; create it with queuectl init")
    name = f"{job.get('id') or 'job'}.{time.time_ns()}.{os.getpid()}.json"
    tmp = os.path.join(spool, "tmp", name)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(job, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(spool, "pending", name))
    fd = os.open(os.path.join(spool, "pending"), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command")
    ap.add_argument("--id")
    ap.add_argument("--run-at")
    ap.add_argument("--priority", type=int)
    args = ap.parse_args()
    job = {"command": args.command}
    if args.id:
        job["id"] = args.id
    if args.run_at:
        job["run_at"] = args.run_at
    if args.priority is not None:
        job["priority"] = args.priority
    print(drop_in(job, spool_dir()))


if __name__ == "__main__":
    main()
