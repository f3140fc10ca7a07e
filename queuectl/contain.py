"""Containment (issue 8): when an attempt ends, every process its job started dies.

The model is systemd's KillMode=control-group. An attempt ends when its shell exits, times out, is
stopped by a second stop signal, or when its worker is lost and recovery takes the job; whatever the
job still has running then (background children, `setsid` or `exec env -i` escapees, double-forked
daemons) gets SIGTERM, then SIGKILL after runner.KILL_GRACE seconds (at once for a lost worker's).

One mechanism per worker, chosen when it starts; `QUEUECTL_CONTAINMENT=cgroup|subreaper|group`
forces one (a forced mechanism that cannot be had stops the worker with an error):

cgroup     Linux with cgroup v2, where this process may create a child of its own cgroup (root, or
           a delegated subtree). Each worker creates `queuectl-jobs.WORKER` beside itself (a child
           of the cgroup it started in; no controller is enabled) and moves itself into it, so
           every job it spawns is born in it: nothing a job starts can leave it, whatever it does
           with its session, process group or environment. What is in it besides the worker is
           what the jobs left; the worker kills those one by one (cgroup.kill would kill the
           worker too). The cgroup outlives a killed worker: whoever recovers its job kills what is
           left in it (`cgroup.kill`), also after the whole pool was killed.
subreaper  Linux otherwise. The worker is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): processes
           orphaned by a job reparent to it instead of to init, so its children other than the job's
           shell are what the job left. The supervisor is a subreaper too and kills what a dead
           worker's job left (those reparent to it). Not covered: a pool killed as a whole (its
           orphans go to init; recovery finds only those that kept QUEUECTL_CLAIM in their
           environment, recovery.kill_orphans).
group      Elsewhere: the job's process group only, which `setsid` escapes.

A worker process must have no children of its own but its jobs (the subreaper reaps any).
"""

import errno
import os
import re
import select
import signal
import time

from queuectl.procs import here, liveness

ENV = "QUEUECTL_CONTAINMENT"
MODES = ("cgroup", "subreaper", "group")
PREFIX = "queuectl-jobs."  # + a worker id: the name of the cgroup of that worker's jobs
KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to be gone (one in D state may never go)
PR_SET_CHILD_SUBREAPER = 36
CGROUP_KILL = True  # use cgroup.kill where the kernel has it (a test turns it off)


# -- cgroup v2: where it is, and what is in a cgroup ---------------------------------------------------

_mount = None  # (mount point, root of the mount) of cgroup v2, () when there is none; per process


def cgroup2_mount():
    global _mount
    if _mount is None:
        _mount = ()
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    if "-" in fields[6:] and fields[fields.index("-", 6) + 1] == "cgroup2":
                        _mount = (_unescape(fields[4]), _unescape(fields[3]))
                        break
        except OSError:
            pass
    return _mount or None


def _unescape(field):
    """mountinfo writes a space, tab, newline or backslash in a path as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_of(pid="self"):
    """The folder of process PID's cgroup v2, or None (no cgroup v2, no such process)."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = [line[3:].rstrip("\n") for line in f if line.startswith("0::")]
    except OSError:
        return None
    if not lines or not lines[0].startswith("/"):
        return None
    point, root = mount
    path = lines[0]
    if root != "/":  # a mount of a subtree: the path must lie under it
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None
        path = path[len(root.rstrip("/")) :]
    return os.path.normpath(point + "/" + path.strip("/"))


def procs_in(path):
    """The pids in cgroup PATH and in the cgroups below it."""
    pids = []
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as f:
            pids.extend(int(p) for p in f.read().split())
        subs = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return pids  # RACE: removed meanwhile
    for sub in subs:
        pids.extend(procs_in(sub))
    return pids


def populated(events_fd):
    """Is any process left in the cgroup (or below it)? EVENTS_FD: its open cgroup.events."""
    try:
        return b"populated 1" in os.pread(events_fd, 128, 0)
    except OSError:  # the cgroup is gone
        return False


def wait_empty(events_fd, timeout):
    """Wait until the cgroup is empty (the kernel notifies a change of `populated`); True if it is."""
    end = time.monotonic() + timeout
    poller = select.poll()
    poller.register(events_fd, select.POLLPRI)
    while populated(events_fd):
        left = end - time.monotonic()
        if left <= 0:
            return False
        poller.poll(min(left, 0.05) * 1000)  # 50 ms at most: polling again is the safety net
    return True


def kill_cgroup(path, events_fd=None):
    """SIGKILL every process in cgroup PATH and below it: `cgroup.kill` (Linux >= 5.14), which no
    fork can escape; before that, every pid listed, again until none is left (a process with
    SIGKILL pending cannot fork, so each round only finds children forked during the last one)."""
    try:
        if CGROUP_KILL:
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
            return
    except OSError:  # no such file before Linux 5.14; or it refused: kill one by one
        pass
    if not os.path.isdir(path):
        return
    end = time.monotonic() + KILL_WAIT
    while time.monotonic() < end:
        pids = procs_in(path)
        if not pids:
            return
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        if events_fd is not None:
            wait_empty(events_fd, 0.01)
        else:
            time.sleep(0.001)


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # RACE: it ended meanwhile


def _kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _rmdir(path):
    try:
        os.rmdir(path)
        return True
    except OSError:  # still populated (EBUSY), or gone
        return False


# -- the mechanisms: what a worker's runner calls -------------------------------------------------------


class CgroupJobs:
    """The worker lives in its cgroup `queuectl-jobs.WORKER` with its jobs: a job is born in it (no
    move per job, nothing between the spawn and the cgroup), and what is in it besides the worker
    is what its jobs left."""

    kind = "cgroup"

    def __init__(self, path, home):
        self.path = path
        self.home = home
        self.me = os.getpid()
        self.alone = f"{self.me}\n".encode()
        self.procs = os.open(os.path.join(path, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
        self.stat = os.open(os.path.join(path, "cgroup.stat"), os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def create(cls, wid):
        """Create (or reuse) the cgroup of worker WID's jobs beside this process, and move this
        process into it. Raises OSError where that cannot be done."""
        home = jobs_home()
        if home is None:
            raise OSError(errno.ENOENT, "no cgroup v2 hierarchy is mounted")
        path = os.path.join(home, PREFIX + wid)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        try:
            move_self(path)
        except OSError:
            _rmdir(path)
            raise
        try:
            return cls(path, home)
        except OSError:
            move_self(home)
            _rmdir(path)
            raise

    def describe(self):
        return f"cgroup {self.path}"

    def others(self):
        """The pids in the cgroup (and below it) other than the worker: what its job runs or left.
        The common case, the worker alone, costs two reads of already open files."""
        try:
            data = os.pread(self.procs, 4096, 0)
            if data == self.alone and b"nr_descendants 0\n" in os.pread(self.stat, 4096, 0):
                return []
        except OSError:
            pass  # RACE: the cgroup is gone; procs_in finds nothing then
        return [p for p in procs_in(self.path) if p != self.me]

    def signal(self, pgid, sig):
        """Send SIG to every process of the running attempt."""
        if sig == signal.SIGKILL:
            self._kill_all()
            return
        for pid in self.others():
            _kill(pid, sig)

    def reap(self, leader):
        pass  # the job's orphans are init's children, not ours

    def clear(self, pgid, grace):
        """After the job's shell has ended: end what is left, SIGTERM then SIGKILL after GRACE
        seconds (at once if GRACE is 0). Returns how many processes were left."""
        left = self.others()
        if not left:
            return 0
        if grace > 0:
            for pid in left:
                _kill(pid, signal.SIGTERM)
            if _wait_until(lambda: not self.others(), grace):
                return len(left)
        self._kill_all()
        return len(left)

    def _kill_all(self):
        """SIGKILL all but the worker, again until none is left: a process with SIGKILL pending
        cannot fork, so each round finds only what was forked during the last one. (cgroup.kill
        would kill the worker too; recovery uses it once the worker is dead.)"""
        end = time.monotonic() + KILL_WAIT
        delay = 0.0005
        while True:
            pids = self.others()
            if not pids or time.monotonic() > end:
                break
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        for sub in sorted((e.path for e in _scandirs(self.path)), reverse=True):
            _rmdir_tree(sub)  # cgroups a job made below ours (as root it may)

    def close(self):
        """The worker stops: it moves back to where it started, and removes the cgroup."""
        for fd in (self.procs, self.stat):
            if fd is not None:
                os.close(fd)
        self.procs = self.stat = None
        try:
            move_self(self.home)
        except OSError:
            return  # left to sweep() once this process is gone
        _rmdir(self.path)


def jobs_home():
    """Where the job cgroups of workers started by this process go: its own cgroup, or, in a
    worker (which lives in its job cgroup), the parent of that."""
    path = cgroup_of()
    if path is not None and os.path.basename(path).startswith(PREFIX):
        return os.path.dirname(path)
    return path


def move_self(path):
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def _scandirs(path):
    try:
        return [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _rmdir_tree(path):
    for sub in _scandirs(path):
        _rmdir_tree(sub.path)
    _rmdir(path)


def _wait_until(cond, timeout):
    end = time.monotonic() + timeout
    delay = 0.0005
    while not cond():
        if time.monotonic() >= end:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


class SubreaperJobs:
    """The worker is a child subreaper: what a job leaves running becomes the worker's child."""

    kind = "subreaper"

    @classmethod
    def create(cls):
        become_subreaper()
        return cls()

    def describe(self):
        return "child subreaper"

    def signal(self, pgid, sig):
        """Send SIG to the job's process group and to every descendant of this worker: the job's
        shell with whatever it started, and what it orphaned, even in other sessions."""
        _kill_group(pgid, sig)
        for pid in descendants(os.getpid()):
            _kill(pid, sig)

    def reap(self, leader):
        """While the job runs: reap the orphans of it that have exited (init would have), never
        LEADER, the job's shell, which the runner waits for."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == leader:
                return
            try:
                os.waitpid(info.si_pid, os.WNOHANG)
            except ChildProcessError:
                return

    def clear(self, pgid, grace):
        if not _children_left():  # one system call: the common case, nothing left
            return 0
        seen, signalled = set(), set()
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        start = time.monotonic()
        delay = 0.0005
        while True:
            pids = set(descendants(os.getpid()))
            if not pids:
                break
            seen |= pids
            now = time.monotonic()
            if sig == signal.SIGTERM and now - start >= grace:
                sig, signalled = signal.SIGKILL, set()
            if now - start >= grace + KILL_WAIT:
                break
            for pid in pids - signalled:
                _kill(pid, sig)
            signalled |= pids
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
            _children_left()  # reap the dead: their children are ours then
        return len(seen)

    def close(self):
        pass


class GroupJobs:
    """No way to find escapees: the job's process group only."""

    kind = "group"

    def describe(self):
        return "process group only"

    def signal(self, pgid, sig):
        _kill_group(pgid, sig)

    def reap(self, leader):
        pass

    def clear(self, pgid, grace):
        if not _group_alive(pgid):
            return 0
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT)):
            if sig == signal.SIGTERM and grace <= 0:
                continue
            _kill_group(pgid, sig)
            end = time.monotonic() + wait
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.01)
            if not _group_alive(pgid):
                break
        return 1  # at least one; a process group cannot be counted without /proc

    def close(self):
        pass


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# -- subreaper helpers ---------------------------------------------------------------------------------


def become_subreaper():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError) as e:  # not Linux: no prctl
        raise OSError(errno.ENOSYS, f"no prctl(PR_SET_CHILD_SUBREAPER): {e}") from None
    if not ok:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _children_left():
    """Reap the children that have exited; True if any child is left."""
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        return False


_HAVE_CHILDREN_FILE = None


def children(pid):
    """The pids of PID's children (all its threads'): /proc/PID/task/*/children, else a scan of /proc."""
    global _HAVE_CHILDREN_FILE
    if _HAVE_CHILDREN_FILE is None:
        _HAVE_CHILDREN_FILE = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
    if not _HAVE_CHILDREN_FILE:
        return [p for p, parent in _parents().items() if parent == pid]
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            pass  # RACE: the thread or process ended
    return out


def _parents():
    """{pid: ppid} of every process (without CONFIG_PROC_CHILDREN)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                out[int(name)] = int(data[data.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(pid):
    """Every live descendant of PID (zombies included), parents before their children."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


# -- choosing ------------------------------------------------------------------------------------------

_decided = None  # (mode, note): what decide() found here; workers forked from this process inherit it


def _wanted():
    wanted = os.environ.get(ENV) or "auto"
    if wanted not in MODES + ("auto",):
        raise OSError(errno.EINVAL, f"{ENV}={wanted!r}: want one of {', '.join(MODES)} (or unset)")
    return wanted


def decide():
    """The mechanism workers started from this process will use: forced by QUEUECTL_CONTAINMENT,
    else the best that works (a probe cgroup of this process is created and removed).
    Returns (mode, a note on why a better one cannot be had)."""
    global _decided
    if _decided is None:
        wanted = _wanted()
        if wanted != "auto":
            _decided = (wanted, "")
        else:
            from queuectl.procs import worker_id

            try:
                CgroupJobs.create(worker_id()).close()
                _decided = ("cgroup", "")
            except OSError as e:
                _decided = ("subreaper" if os.path.exists("/proc/self/stat") else "group", f" (no cgroup: {e.strerror or e})")
    return _decided


def for_worker(wid):
    """The containment of worker WID's jobs: (mechanism, a note on why a better one was not had).
    A mechanism forced by QUEUECTL_CONTAINMENT that cannot be had raises OSError."""
    wanted = _wanted()
    if wanted != "auto":
        order, note = (wanted,), ""
    elif _decided is not None:  # the supervisor probed already
        order, note = MODES[MODES.index(_decided[0]) :], _decided[1]
    else:
        order, note = MODES, ""
    for mode in order:
        try:
            if mode == "cgroup":
                return CgroupJobs.create(wid), note
            if mode == "subreaper":
                return SubreaperJobs.create(), note
            return GroupJobs(), note
        except OSError as e:
            if wanted != "auto":
                raise
            note += f" (no {mode}: {e.strerror or e})"
    raise AssertionError("unreachable: GroupJobs cannot fail")


def for_supervisor():
    """Called once by a pool's supervisor. With subreaper workers it becomes a subreaper as well:
    the processes of a dead worker's job reparent to it. True if it must then call kill_strays()
    each time a worker dies."""
    try:
        if decide()[0] != "subreaper":
            return False
        become_subreaper()
    except OSError:
        return False
    return True


def kill_strays(workers):
    """SIGKILL every descendant of this supervisor that is not one of WORKERS (pids) or theirs:
    what dead workers' jobs left; reap them."""
    end = time.monotonic() + KILL_WAIT
    while time.monotonic() < end:
        strays = [p for p in children(os.getpid()) if p not in workers]
        if not strays:
            return
        for pid in strays:
            for p in [pid, *descendants(pid)]:
                _kill(p, signal.SIGKILL)
        for pid in strays:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass  # reaped by the supervisor's own wait meanwhile
        time.sleep(0.001)


# -- recovery: what lost workers left ------------------------------------------------------------------


def kill_lost(holder):
    """Kill what is left in the job cgroup of HOLDER, a lost worker of this host, and remove the
    cgroup. It is looked for beside this process's cgroup, else through the cgroup of every
    process (a pool started elsewhere). Returns how many processes it killed."""
    name = PREFIX + holder
    if cgroup2_mount() is None or "/" in name:
        return 0
    parent = jobs_home()
    here = os.path.join(parent, name) if parent is not None else None
    places = [here] if here is not None and os.path.isdir(here) else _find_cgroups(name)
    killed = 0
    for path in places:
        try:
            events = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # RACE: removed meanwhile
        killed += len(procs_in(path))
        try:
            kill_cgroup(path, events)
            wait_empty(events, KILL_WAIT)
        finally:
            os.close(events)
        _rmdir(path)
    return killed


def _find_cgroups(name):
    """The cgroups named NAME that hold a process, found through /proc/*/cgroup."""
    found = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        path = cgroup_of(pid)
        if path is not None:
            parts = path.split("/")
            if name in parts:
                found.add("/".join(parts[: parts.index(name) + 1]))
    return found


def sweep():
    """Remove the empty job cgroups of dead workers of this host beside this process's cgroup
    (a worker removes its own when it stops; a killed one cannot). One that still holds processes
    is left to the recovery of its worker's claims (kill_lost)."""
    if cgroup2_mount() is None:
        return
    parent = jobs_home()
    if parent is None:
        return
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        wid = name[len(PREFIX) :]
        try:
            dead = here(wid) and liveness(wid) is False
        except ValueError:
            continue
        if dead:
            _rmdir(os.path.join(parent, name))
