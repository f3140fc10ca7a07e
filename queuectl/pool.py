"""`worker start` and `worker stop`: a supervisor process and its N forked workers.

Each worker runs in its own process group, so a Ctrl-C in the terminal reaches only the
supervisor, which passes it on as exactly one SIGTERM per worker: one Ctrl-C is one graceful stop,
a second one stops the jobs too. A worker that dies of anything but a stop request is replaced.

The supervisor reads its stop signals with sigwaitinfo, like the workers (stopsignals.py): one
sent by a process of the pool (a worker's job) is ignored, and requests count per sender, so that
two `worker stop` at once are one graceful stop.

`worker stop` asks every worker (and their supervisors) to stop once; after --timeout it sends
a second SIGTERM (the workers stop their jobs and put them back), after --kill-after more SIGKILL.
"""

import json
import os
import signal
import sys
import time

from queuectl.errors import QueuectlError
from queuectl.layout import COUNTED
from queuectl import logsink
from queuectl.logsink import LogSink
from queuectl import contain
from queuectl.owners import may_act_on, user_name, who_may
from queuectl.procs import here, liveness, process_uid, split_worker_id
from queuectl.recovery import holder_is_dead
from queuectl.settings import Watched
from queuectl.stopsignals import HAVE_SIGINFO, STOP_SIGNALS, Requests, descends_from, lineage, sent_from, signame

# A crash loop: workers dying by themselves (an exit status, a signal other than SIGKILL) within
# QUICK_DEATH seconds of their start, CRASH_LOOP times within CRASH_WINDOW seconds. Then the
# supervisor stops replacing them; other deaths are always replaced.
QUICK_DEATH = 1.0
CRASH_LOOP = 5
CRASH_WINDOW = 10.0

STOP_TIMEOUT = 60.0  # `worker stop`: seconds the running jobs get to finish before the second SIGTERM
KILL_AFTER = 10.0  # `worker stop`: seconds after the second SIGTERM before SIGKILL


def _fork_worker(spool, burst, ready_w, stats_w, board=None, slot=0):
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if HAVE_SIGINFO:  # SIGTERM and SIGINT stay blocked: the worker reads them (stopsignals.py)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGCHLD,))
        from queuectl.worker import Worker

        view = board.reader(slot) if board is not None else None
        code = Worker(spool, burst=burst, ready_fd=ready_w, stats_fd=stats_w, supervisor=os.getppid(), board=view).run()
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
        self.slots = {}  # pid -> its place on the claim board (claimboard.py), while it runs
        self.board = None
        self.requests = Requests()
        self.totals = dict.fromkeys(COUNTED, 0)
        self.quick_deaths = []
        self.sink = None
        self.strays = False
        self._ignored_logged_at = -3600.0

    @property
    def stopping(self):
        return self.requests.level

    def say(self, text):
        self.sink.write(f"queuectl: {text}\n")

    def _on_signal(self, signum, frame):  # without sigwaitinfo: every stop signal counts, sender unknown
        self._stop_request(None)

    def _stop_signal(self, sent):
        """A stop signal read by sigwaitinfo: ignored if a process of the pool sent it."""
        me = os.getpid()
        if sent.pid not in (None, 0, me) and (sent.pid in self.children or descends_from(sent, me)):
            now = time.monotonic()
            if now - self._ignored_logged_at >= 60:
                self._ignored_logged_at = now
                self.say(f"{signame(sent.signo)} from pid {sent.pid} (a process of the pool) ignored: a job cannot stop the pool")
            return
        self._stop_request(sent.pid)

    def _stop_request(self, sender):
        """Pass a stop request on to every worker, once per level: the first one from anyone, then
        a second one from the same sender (stopsignals.Requests)."""
        if not self.requests.add(sender):
            return
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # RACE: it exited meanwhile; it is reaped next

    def run(self, ready_w=None):
        """Start the workers and supervise them until all have exited; returns the exit status."""
        self.sink = LogSink()
        self.stats_r, stats_w = os.pipe()
        os.set_blocking(self.stats_r, False)
        ready_r, child_ready_w = os.pipe()
        waited = STOP_SIGNALS + (signal.SIGCHLD,)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # not an inherited SIG_IGN: children must not reap themselves
        if HAVE_SIGINFO:  # read with sigwaitinfo below; workers inherit the mask (see _fork_worker)
            signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        else:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.strays = contain.for_supervisor()  # subreaper workers: a dead one's job reparents to us
        self._stats_w = stats_w
        from queuectl.claimboard import ClaimBoard

        self.board = ClaimBoard(self.count) if self.count > 1 else None  # a worker alone needs no news
        for _ in range(self.count):
            self._start(child_ready_w)
        os.close(child_ready_w)
        got = _read_n(ready_r, self.count, deadline=time.monotonic() + 30)
        os.close(ready_r)
        if ready_w is not None:
            os.write(ready_w, b"r" * got)
            os.close(ready_w)
        while self.children:
            if HAVE_SIGINFO:
                info = signal.sigwaitinfo(waited)
                if info.si_signo != signal.SIGCHLD:
                    self._stop_signal(sent_from(info))
            else:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                self._exited(pid, status)
            self._reap()
        os.close(stats_w)
        self._collect_stats()
        t = self.totals
        cancelled = f", {t['cancelled']} cancelled" if t.get("cancelled") else ""  # dead by `queuectl cancel`, not counted as dead
        self.say(f"workers stopped: {t['completed']} completed, {t['failed']} failed, {t['dead']} dead{cancelled}")
        self.sink.close(timeout=1.0)
        return 0

    def _reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self._exited(pid, status)

    def _exited(self, pid, status):
        started = self.children.pop(pid, None)
        self.slots.pop(pid, None)  # a replacement takes its place on the board
        if self.strays and started is not None:
            contain.kill_strays(self.children)
        self._collect_stats()
        if (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0) and not self.stopping and started is not None:
            self._replace(pid, status, started)

    def _start(self, ready_w):
        slot = min(set(range(self.count)) - set(self.slots.values()), default=0)
        pid = _fork_worker(self.spool, self.burst, ready_w, self._stats_w, self.board, slot)
        self.children[pid] = time.monotonic()
        self.slots[pid] = slot

    def _replace(self, pid, status, started):
        now = time.monotonic()
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if now - started < QUICK_DEATH and not killed:  # SIGKILL comes from outside: not a crash
            self.quick_deaths = [t for t in self.quick_deaths if now - t < CRASH_WINDOW] + [now]
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        if len(self.quick_deaths) >= CRASH_LOOP:
            self.say(f"worker {pid} died ({how}); workers keep dying at start, not replacing it")
            return
        self.say(f"worker {pid} died ({how}); starting a replacement")
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
    spool.ensure(create=False)  # the CLI made it, or refused a missing one: never made here
    if not detach:
        return Supervisor(spool, count, burst).run()
    log = spool.worker_log
    try:
        log_fd = spool.open_worker_log()  # here, so that a log we cannot use is said, not hidden
    except OSError as e:
        raise QueuectlError(f"cannot use the worker log {e.filename}: {e.strerror}") from None
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the detached supervisor: its own session, output to this user's worker log
        os.close(ready_r)
        try:
            os.setsid()
            _redirect_output(log_fd)
            cap = Watched(spool.config_path)["max-worker-log-bytes"]
            logsink.rotation = _Rotation(spool, cap)  # inherited by the workers: each writer rotates or reopens
            code = Supervisor(spool, count, burst).run(ready_w)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(log_fd)
    got = _read_n(ready_r, count, deadline=time.monotonic() + 60)
    os.close(ready_r)
    if got < count:
        raise QueuectlError(f"only {got} of {count} workers started; see {log}")
    print(f"queuectl: {count} worker(s) running in the background (supervisor pid {pid}); log: {log}", file=sys.stderr)
    return 0


class _Rotation:
    """Before each log line of a detached pool's process: rotate the worker log once it passes
    CAP bytes, or follow a rotation another process of the pool made (fds 1 and 2 reopened)."""

    def __init__(self, spool, cap):
        self.spool, self.cap = spool, cap

    def __call__(self):
        try:
            fd = self.spool.rotate_worker_log(2, self.cap)
        except OSError:
            return  # the log as it is: a line too many beats a worker stopped by its log
        if fd is not None:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)


def _redirect_output(fd):
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
    out = []
    for wid in live:
        pid = split_worker_id(wid).pid
        uid = process_uid(pid)  # the process's own uid where /proc shows it: a heartbeat can be planted
        out.append((wid, pid, uid if uid is not None else spool.heartbeat_owner(wid)))
    return out


def _live(spool, wid, now, lease):
    return here(wid) and not holder_is_dead(spool, wid, spool.fs_now(now), lease)


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


class _Target:
    """A worker `worker stop` is stopping, with what it reports about it."""

    def __init__(self, spool, wid, pid, uid):
        self.spool, self.wid, self.pid = spool, wid, pid
        self.user = user_name(uid)
        self.supervisor = _live_here((spool.read_heartbeat(wid) or {}).get("supervisor"))
        self.lease = Watched(spool.config_path)["lease-seconds"]

    def alive(self):
        return _live(self.spool, self.wid, time.time(), self.lease)

    def took_request(self, spool):
        """Has the worker taken a stop request (its heartbeat says so), or is it gone?"""
        return not self.alive() or "stopping_since" in (spool.read_heartbeat(self.wid) or {})

    def stopping_now(self, spool):
        """Is the worker stopping its job (its heartbeat says so), or gone?"""
        return not self.alive() or (spool.read_heartbeat(self.wid) or {}).get("stopping_now") is True

    def describe(self, jobs):
        job = jobs.get(self.wid)
        return f"pid {self.pid} (user {self.user}, {'job ' + job if job else 'no job'})"


def _live_here(wid):
    """The pid behind worker id WID (a heartbeat's `supervisor`) if it is a live process of this
    PID namespace."""
    try:
        return split_worker_id(wid).pid if here(wid) and liveness(wid) is not False else None
    except (ValueError, TypeError):
        return None


def _held_jobs(spool):
    """{worker id: id of the job it runs} from the claims in processing/."""
    try:
        return {c.holder: c.job_id for c in spool.claims() if c.op == "run"}
    except OSError:
        return {}


def _signal(pid, sig, failed):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # RACE: it exited meanwhile; the wait sees it gone
    except PermissionError:
        failed.append(pid)


def _wait(cond, seconds, poll):
    end = time.monotonic() + seconds
    while not cond():
        if time.monotonic() >= end:
            return False
        time.sleep(poll)
    return True


def _secs(seconds):
    return f"{seconds:g} s"


def stop(spool, timeout=STOP_TIMEOUT, kill_after=KILL_AFTER, say=None, poll=0.05):
    """Stop every worker of this spool on this host, and wait until they are gone.

    Each worker (and its supervisor, so that it replaces none) gets one SIGTERM: it finishes its job
    and exits. Those still running after TIMEOUT seconds get a second SIGTERM: they stop their jobs
    and put them back in pending/. Those still running KILL_AFTER seconds later get SIGKILL (their
    jobs' processes too): their jobs stay claimed until recovery counts them as lost. SAY(line) is
    told each escalation. Only this user's workers are stopped, unless run as root: each other
    user's are named and left running. Returns (workers stopped, 0 if all of this user's stopped
    within TIMEOUT, else 1; 1 too when every worker found was another user's)."""
    say = say or (lambda line: print(f"queuectl: {line}", file=sys.stderr))
    workers = local_workers(spool)
    others = [w for w in workers if not may_act_on(w[2])]
    for uid in dict.fromkeys(w[2] for w in others):
        theirs = [w for w in others if w[2] == uid]
        say(f"{whose(theirs)} left running: only {who_may(uid) if uid is not None else 'their user or root'} can stop them")
    if others and len(others) == len(workers):
        return 0, 1
    workers = [w for w in workers if may_act_on(w[2])]
    targets = [_Target(spool, wid, pid, uid) for wid, pid, uid in workers]
    if not targets:
        elsewhere = sum(1 for wid in spool.worker_ids() if not here(wid))
        if elsewhere:
            say(f"{elsewhere} worker(s) registered from other PID namespaces (other hosts or containers) or by an older queuectl: stop them there")
        return 0, 0
    mine = {p for p, _, _ in lineage(os.getpid()) or []}
    if any(t.pid in mine for t in targets):
        raise QueuectlError("worker stop was run by a job of this spool's workers: a job cannot stop the pool it runs in")
    say(f"stopping {whose(workers)}")
    failed = []
    supervisors = set()
    for t in targets:
        if t.supervisor and t.supervisor not in supervisors:
            supervisors.add(t.supervisor)
            _signal(t.supervisor, signal.SIGTERM, [])  # it replaces no worker from now on, and passes the request on
        _signal(t.pid, signal.SIGTERM, failed)
    code = 0
    if failed:
        say(
            f"not permitted to stop {whose([w for w in workers if w[1] in failed])}: "
            f"{', '.join(t.describe(_held_jobs(spool)) for t in targets if t.pid in failed)}; run `worker stop` as that user or as root"
        )
        code = 1
    left = [t for t in targets if t.pid not in failed]
    if _wait(lambda: not any(t.alive() for t in left), timeout, poll):
        return len(targets), code
    # a request not read yet (--timeout 0) would merge with the second one: wait until the workers
    # have taken it (idle ones are gone by then)
    _wait(lambda: all(t.took_request(spool) for t in left), 1.0, poll)
    left = [t for t in left if t.alive()]
    if not left:
        return len(targets), code
    jobs = _held_jobs(spool)
    say(
        f"after {_secs(timeout)}, {len(left)} worker(s) still running; sent a second SIGTERM, "
        f"to stop their jobs and put them back in pending/: {', '.join(t.describe(jobs) for t in left)}"
    )
    # a worker stops its job on a second request from one sender; our first may have merged with
    # the supervisor's (two pending SIGTERMs are one): send again until it says it stops its job
    end = time.monotonic() + kill_after
    for _ in range(3):
        for t in left:
            if not t.stopping_now(spool):
                _signal(t.pid, signal.SIGTERM, [])
        if _wait(lambda: all(t.stopping_now(spool) for t in left), min(0.5, max(0.0, end - time.monotonic())), poll):
            break
    if not _wait(lambda: not any(t.alive() for t in left), max(0.0, end - time.monotonic()), poll):
        left = [t for t in left if t.alive()]
        jobs = _held_jobs(spool)
        say(
            f"{_secs(kill_after)} later, {len(left)} worker(s) still running; sent SIGKILL: "
            f"{', '.join(t.describe(jobs) for t in left)}; their jobs stay claimed in processing/ until recovery counts them as lost"
        )
        for t in left:
            _signal(t.pid, signal.SIGKILL, [])
        _kill_jobs_of(spool, {t.wid for t in left})
        if not _wait(lambda: not any(t.alive() for t in left), 5.0, poll):
            say(f"still running after SIGKILL: {', '.join(t.describe(jobs) for t in left if t.alive())}")
    return len(targets), 1


def _kill_jobs_of(spool, wids):
    """Kill what the jobs of these SIGKILLed workers left running (recovery would, later)."""
    from queuectl.recovery import kill_orphans

    try:
        claims = [c for c in spool.claims() if c.op == "run" and c.holder in wids]
    except OSError:
        return
    for c in claims:
        kill_orphans(c.name)
