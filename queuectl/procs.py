"""Process identity: who is this process, and is the process behind a worker id still alive?

A worker id is host.pid.start. The start time (clock ticks since boot on Linux) tells a live
process from a newer one that reuses the PID.
"""

import os
import re

_HOST_BAD = re.compile(r"[^A-Za-z0-9.-]")


def hostname():
    return _HOST_BAD.sub("-", os.uname().nodename) or "localhost"


_HAVE_PROC = os.path.exists("/proc/self/stat")


def start_time(pid):
    """The process start time in clock ticks since boot, or None if there is no such process.

    Without /proc (not Linux): 0 for any live process (PID reuse cannot be told apart there)."""
    if not _HAVE_PROC:
        return _start_time_fallback(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return _start_time_fallback(pid)
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # a zombie has stopped running: its job is lost
        return None
    return int(fields[19])


def _start_time_fallback(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0  # alive, start time unknown: match any recorded start


def worker_id(pid=None):
    pid = pid or os.getpid()
    if os.path.exists("/proc/self/stat"):
        start = start_time(pid)
    else:
        start = 0
    return f"{hostname()}.{pid}.{start}"


def split_worker_id(wid):
    """'host.pid.start' -> (host, pid, start); raises ValueError on anything else."""
    host, pid, start = wid.rsplit(".", 2)
    return host, int(pid), int(start)


def is_alive_here(pid, start):
    """Is process PID, started at START, still running on this host?"""
    now_start = start_time(pid)
    if now_start is None:
        return False
    return start == 0 or now_start == 0 or now_start == start


def on_this_host(wid):
    try:
        return split_worker_id(wid)[0] == hostname()
    except ValueError:
        return False
