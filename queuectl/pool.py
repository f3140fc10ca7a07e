"""`worker start` and `worker stop`: a supervisor process and its N forked workers.

Each worker runs in its own process group, so a Ctrl-C in the terminal reaches only the
supervisor, which passes it on as exactly one SIGTERM per worker: one Ctrl-C is one graceful stop,
a second one stops the jobs too. A worker that dies of anything but a stop request is replaced.
"""

import json
import os
import signal
import sys
import time

from queuectl import contain
from queuectl.errors import QueuectlError
from queuectl.layout import OUTCOMES
from queuectl.procs import here, split_worker_id
from queuectl.recovery import holder_is_dead
from queuectl.settings import Watched

# A crash loop: workers dying by themselves (an exit status, a signal other than SIGKILL) within
# QUICK_DEATH seconds of their start, CRASH_LOOP times within CRASH_WINDOW seconds. Then the
# supervisor stops replacing them; other deaths are always replaced.
QUICK_DEATH = 1.0
CRASH_LOOP = 5
CRASH_WINDOW = 10.0


def _fork_worker(spool, burst, ready_w, stats_w):
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        from queuectl.worker import Worker

        code = Worker(spool, burst=burst, ready_fd=ready_w, stats_fd=stats_w).run()
    except BaseException as e:  # a worker must never fall back into the supervisor's code
        try:
            sys.stderr.write(f"queuectl worker {os.getpid()}: crashed: {e!r}\n")
            sys.stderr.flush()
        except Exception:
            pass
    finally:
        os._exit(code)


class Supervisor:
    def __init__(self, spool, count, burst):
        self.spool = spool
        self.count = count
        self.burst = burst
        self.children = {}  # pid -> when it started (monotonic), while it runs
        self.stopping = 0
        self.totals = dict.fromkeys(OUTCOMES, 0)
        self.quick_deaths = []

    def _on_signal(self, signum, frame):
        self.stopping += 1
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # RACE: it exited meanwhile; os.wait() will collect it

    def run(self, ready_w=None):
        """Start the workers and supervise them until all have exited; returns the exit status."""
        self.stats_r, stats_w = os.pipe()
        os.set_blocking(self.stats_r, False)
        ready_r, child_ready_w = os.pipe()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        strays = contain.for_supervisor()  # subreaper workers: a dead one's job reparents to us
        self._stats_w = stats_w
        for _ in range(self.count):
            self._start(child_ready_w)
        os.close(child_ready_w)
        got = _read_n(ready_r, self.count, deadline=time.monotonic() + 30)
        os.close(ready_r)
        if ready_w is not None:
            os.write(ready_w, b"r" * got)
            os.close(ready_w)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = self.children.pop(pid, None)
            if strays and started is not None:
                contain.kill_strays(self.children)
            self._collect_stats()
            if (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0) and not self.stopping and started is not None:
                self._replace(pid, status, started)
        os.close(stats_w)
        self._collect_stats()
        t = self.totals
        print(f"queuectl: workers stopped: {t['completed']} completed, {t['failed']} failed, {t['dead']} dead", file=sys.stderr)
        return 0

    def _start(self, ready_w):
        pid = _fork_worker(self.spool, self.burst, ready_w, self._stats_w)
        self.children[pid] = time.monotonic()

    def _replace(self, pid, status, started):
        now = time.monotonic()
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if now - started < QUICK_DEATH and not killed:  # SIGKILL comes from outside: not a crash
            self.quick_deaths = [t for t in self.quick_deaths if now - t < CRASH_WINDOW] + [now]
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        if len(self.quick_deaths) >= CRASH_LOOP:
            print(f"queuectl: worker {pid} died ({how}); workers keep dying at start, not replacing it", file=sys.stderr)
            return
        print(f"queuectl: worker {pid} died ({how}); starting a replacement", file=sys.stderr)
        r, w = os.pipe()
        self._start(w)
        os.close(w)
        os.close(r)

    def _collect_stats(self):
        data = b""
        try:
            while True:
                chunk = os.read(self.stats_r, 65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        for line in data.splitlines():
            try:
                for k, v in json.loads(line).items():
                    self.totals[k] = self.totals.get(k, 0) + v
            except ValueError:
                pass


def _read_n(fd, n, deadline):
    import select

    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            r, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if not r:
            break
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        got += len(chunk)
    return got


def start(spool, count, burst=False, detach=False):
    """Run COUNT workers in the foreground, or in the background with DETACH."""
    spool.ensure()
    if not detach:
        return Supervisor(spool, count, burst).run()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the detached supervisor: its own session, output to SPOOL/worker.log
        os.close(ready_r)
        try:
            os.setsid()
            _redirect_output(spool.worker_log)
            code = Supervisor(spool, count, burst).run(ready_w)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(ready_w)
    got = _read_n(ready_r, count, deadline=time.monotonic() + 60)
    os.close(ready_r)
    if got < count:
        raise QueuectlError(f"only {got} of {count} workers started; see {spool.root}/worker.log")
    print(f"queuectl: {count} worker(s) running in the background (supervisor pid {pid}); log: {spool.root}/worker.log", file=sys.stderr)
    return 0


def _redirect_output(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def local_workers(spool, now=None):
    """[(worker id, pid, uid)] of the live workers of this spool in this PID namespace (this
    machine or container), whatever host name they started under. A worker whose pid cannot be
    checked (another user's, hidden by /proc) counts while its heartbeat is within the lease."""
    now = time.time() if now is None else now
    lease = Watched(spool.config_path)["lease-seconds"]
    live = [wid for wid in spool.worker_ids() if _live(spool, wid, now, lease)]
    return [(wid, split_worker_id(wid).pid, spool.heartbeat_owner(wid)) for wid in live]


def _live(spool, wid, now, lease):
    return here(wid) and not holder_is_dead(spool, wid, now, lease)


def whose(workers):
    """'2 worker(s) of user root (pids 12, 13)' for [(worker id, pid, uid)], one part per user."""
    import pwd

    pids = {}
    for _, pid, uid in workers:
        try:
            user = pwd.getpwuid(uid).pw_name if uid is not None else "unknown"
        except KeyError:
            user = f"uid {uid}"
        pids.setdefault(user, []).append(pid)
    return " and ".join(
        f"{len(p)} worker(s) of user {user} (pid{'s' if len(p) > 1 else ''} {', '.join(map(str, sorted(p)))})" for user, p in pids.items()
    )


def stop(spool, poll=0.05, say=None):
    """Ask every worker of this spool in this PID namespace to finish its job and exit, whatever
    the host name is now; say whose they are; wait until they have exited. Returns how many.
    Raises QueuectlError if some may not be signalled (another user's)."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    workers = local_workers(spool)
    if not workers:
        elsewhere = sum(1 for wid in spool.worker_ids() if not here(wid))
        if elsewhere:
            say(f"queuectl: {elsewhere} worker(s) registered from other PID namespaces (other hosts or containers) or by an older queuectl: stop them there")
        return 0
    say(f"queuectl: stopping {whose(workers)}")
    denied = []
    for worker in workers:
        try:
            os.kill(worker[1], signal.SIGTERM)
        except ProcessLookupError:
            pass  # RACE: it exited meanwhile; the wait below sees it gone
        except PermissionError:
            denied.append(worker)
    remaining = {wid for wid, _, _ in workers} - {wid for wid, _, _ in denied}
    lease = Watched(spool.config_path)["lease-seconds"]
    while remaining:
        remaining = {wid for wid in remaining if _live(spool, wid, time.time(), lease)}
        if remaining:
            time.sleep(poll)
    if denied:
        stopped = len(workers) - len(denied)
        raise QueuectlError(f"{stopped} worker(s) stopped; not permitted to stop {whose(denied)}: run `worker stop` as that user or as root")
    return len(workers)
