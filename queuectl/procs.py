"""Process identity: who is this process, and is the process behind a worker id still alive?

A worker id is host.pid.start.nNS (spool_layout.md, "Worker ids and liveness"). A pid means
something only in its PID namespace, so NS names it: a digest of the boot id and of the PID
namespace. The start time (clock ticks since boot) tells a live process from a newer one that
reuses the PID. The host name is there for people: no decision reads it.

liveness() answers True (alive), False (dead) or None (cannot be told from here); the caller then
judges by the lease (recovery.holder_is_dead). A guess is never "dead".
"""

import functools
import os
import re

from queuectl.layout import parse_worker, worker_name

_HOST_BAD = re.compile(r"[^A-Za-z0-9.-]")
_PID_MAX = 1 << 22  # PID_MAX_LIMIT: no pid is larger


def hostname():
    return _HOST_BAD.sub("-", os.uname().nodename) or "localhost"


@functools.lru_cache(maxsize=None)
def namespace():
    """This process's PID namespace: 8 hex digits, the same for two processes exactly when their
    pids can be compared (same boot of the same kernel, same PID namespace). Computed once: a
    process never changes PID namespace. Without /proc, a digest of the host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
        st = os.stat("/proc/self/ns/pid")
        key = b"%s:%d:%d" % (boot, st.st_dev, st.st_ino)
    except OSError:
        key = b"host:" + os.uname().nodename.encode()
    return _sha256(key).hexdigest()[:8]


def _sha256(data):
    # CPython's own SHA-256 module loads in a third of the time hashlib takes to set up OpenSSL,
    # and every CLI call that writes a file names its worker id
    try:
        from _sha2 import sha256  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:
            from hashlib import sha256
    return sha256(data)


@functools.lru_cache(maxsize=None)
def _proc_is_ours():
    """Does /proc show this PID namespace? (Not when it was mounted for another one, say after
    `unshare --pid --fork` without --mount-proc: its numbers are then other processes.)"""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _stat(pid):
    """(state, start ticks) from /proc/PID/stat. Raises OSError when it cannot be read or is hidden."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0], int(fields[19])


def start_time(pid):
    """The start time of this process (or of PID, in this namespace) in clock ticks since boot;
    0 when it cannot be read."""
    try:
        return _stat(pid or os.getpid())[1] if _proc_is_ours() else 0
    except (OSError, ValueError, IndexError):
        return 0


def worker_id(pid=None):
    pid = pid or os.getpid()
    return worker_name(hostname(), pid, start_time(pid), namespace())


def split_worker_id(wid):
    """A worker id -> layout.Worker(host, pid, start, ns); raises ValueError on anything else."""
    w = parse_worker(wid)
    if w is None:
        raise ValueError(f"not a worker id: {wid!r}")
    return w


def here(wid):
    """Is WID a process of this PID namespace (whatever the host name was or is)?"""
    w = parse_worker(wid)
    return w is not None and w.ns == namespace()


def liveness(wid):
    """Is the process behind WID alive? True, False, or None when this process cannot tell: it is
    in another (or an unknown) PID namespace, or its pid is taken but /proc does not show by whom.
    Raises ValueError for a name that is not a worker id."""
    w = split_worker_id(wid)
    if w.ns != namespace():
        return None
    return process_alive(w.pid, w.start)


def process_alive(pid, start):
    """Is PID, started at START (clock ticks; 0: unknown), running in this PID namespace?
    True, False, or None when it cannot be told."""
    if not 0 < pid <= _PID_MAX:
        return False
    if _proc_is_ours():
        try:
            state, ticks = _stat(pid)
        except (OSError, ValueError, IndexError):
            pass  # hidden (hidepid), unreadable or gone: ask the kernel below
        else:
            if state in (b"Z", b"X"):  # a zombie has stopped running: its job is lost
                return False
            if start and ticks != start:  # the pid now belongs to another process
                return False
            return True if start else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return None  # the pid is taken, by whom cannot be told


def process_uid(pid):
    """The effective uid PID runs as, where /proc shows it (else None)."""
    if not _proc_is_ours():
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return None
