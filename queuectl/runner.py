"""Running one attempt: /bin/sh -c COMMAND in its own session, output to a log file.

The worker stays single-threaded: it waits for the child with a pidfd (or a short poll where there
is none) so that it can refresh its heartbeat, enforce the timeout and react to a stop signal.
"""

import contextlib
import errno
import os
import select
import signal
import time
from collections import namedtuple

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a job must stop
CLAIM_ENV = "QUEUECTL_CLAIM"  # lets recovery find a lost worker's orphaned job (see recovery.py)


Spec = namedtuple(
    "Spec",
    "command env cwd open_log timeout max_log_bytes tick wakeup_fd on_tick should_abort after_spawn contain on_spawn should_cancel owner",
    defaults=(None, 0, None, None, None, None, None, None, None, None, None),
)
Spec.__doc__ = """One attempt to run.

command, env, cwd: what to run (/bin/sh -c COMMAND) and how. open_log(): the fd of the attempt's
log, called at the first byte of output (at most max_log_bytes are kept, 0: no cap). timeout:
seconds, or None. on_tick() is called about every `tick` seconds while the job runs (heartbeats,
settings); should_abort() returning True stops the job's whole process group (a second stop
signal); after_spawn() runs once the job has started (the worker settles earlier results
meanwhile). Both may return how many seconds they want the next call in, when sooner than a tick.
on_spawn(pid) is told the job's pid as soon as it exists (the worker tells its job's stop signals
from others'). wakeup_fd: the signal wake-up pipe, so that a signal cuts a wait short. contain: the
worker's containment (contain.py), which also stops, and at the end of the attempt kills, whatever
the job started outside its process group; None: the process group only. should_cancel()
returning True (`queuectl cancel`: asked right after the spawn and at every wake-up) stops the
job the same way, and the attempt ends cancelled. owner: a sysspool.Owner to run the job as (a
system spool's root worker; see spawn_as), or None: the worker's own user."""


class Attempt:
    """The outcome of one attempt: exit_code (None unless the command ran to an exit) and error."""

    __slots__ = ("exit_code", "error", "started", "finished", "interrupted", "cancelled", "log_written", "log_error", "leftovers", "notes")

    def __init__(self, started):
        self.started = started
        self.finished = None
        self.exit_code = None
        self.error = None
        self.interrupted = False
        self.cancelled = False  # stopped by `queuectl cancel`: never retried
        self.log_written = False
        self.log_error = None
        self.leftovers = 0  # processes the job left running when its shell ended (killed then)
        self.notes = ()  # remarks for the attempt's history entry (e.g. stop signals it sent its worker)


# A job's own `cwd` is entered by the job's shell, as its owner: a chdir done by root before it
# drops its privileges would let the job start inside a folder its owner may not enter.
_ENTER_CWD = 'cd -- "$1" || exit 2; exec /bin/sh -c "$2"'


def spawn_as(owner, command, env, cwd, out_fd):
    """Start /bin/sh -c COMMAND as OWNER (uid, primary gid, supplementary groups), as the leader
    of a new session; ENV is the whole environment. Without CWD the job starts in OWNER's home."""
    import subprocess

    from queuectl import sysspool

    argv = ["/bin/sh", "-c", command] if cwd is None else ["/bin/sh", "-c", _ENTER_CWD, "sh", cwd, command]
    with _empty_sigmask():
        proc = subprocess.Popen(
            argv,
            cwd=sysspool.child_cwd(owner) if cwd is None else "/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=out_fd,
            start_new_session=True,
            user=owner.uid,
            group=owner.gid,
            extra_groups=list(owner.groups),
        )
    proc.returncode = 0  # we reap it ourselves
    return proc.pid


def spawn(command, env, cwd, out_fd):
    """Start /bin/sh -c COMMAND as the leader of a new session; returns its pid."""
    if cwd is None and hasattr(os, "posix_spawn"):
        return os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", command],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_fd, 1),
                (os.POSIX_SPAWN_DUP2, out_fd, 2),
            ],
            setsid=True,
            # like Popen's restore_signals: Python ignores SIGPIPE/SIGXFSZ, and an ignored signal
            # survives exec, so `yes | head -1` would never end in a job
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),  # the worker blocks SIGTERM and SIGINT (stopsignals.py); the job starts with none blocked
        )
    import subprocess  # only jobs with a cwd pay for it: posix_spawn has no chdir

    with _empty_sigmask():  # Popen has no setsigmask: the child inherits this thread's mask
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=out_fd,
            start_new_session=True,
        )
    proc.returncode = 0  # we reap it ourselves: keep Popen's __del__ from waiting on it
    return proc.pid


@contextlib.contextmanager
def _empty_sigmask():
    """No signal blocked in this thread meanwhile (a stop signal that comes then reaches the
    worker's Python handler, from an unknown sender)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def seal_inherited_fds():
    """posix_spawn has no close_fds: mark every fd above 2 close-on-exec, so that none leaks into
    jobs (watchdog's inotify fd is created inheritable). Call once the worker's fds are open;
    fds Python opens later are close-on-exec already (PEP 446)."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            if int(name) > 2 and os.get_inheritable(int(name)):
                os.set_inheritable(int(name), False)
        except OSError:
            pass


def exit_code_of(status):
    """A wait status -> the exit code the contract reports: the status, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class OutputPump:
    """Copies the job's output (one pipe for stdout and stderr, so their order is kept) into its
    log, up to MAX_BYTES; the rest is counted, dropped, and noted at the end of the log. The job
    never blocks on a full disk of its own output.

    The log is created by OPEN_LOG() on the first byte: most jobs print nothing, and a file not
    created is a metadata write (and an inode in logs/) saved per attempt."""

    def __init__(self, open_log, max_bytes):
        self.fd, self.write_end = os.pipe()
        os.set_blocking(self.fd, False)
        self.open_log = open_log
        self.log_fd = None
        self.max_bytes = max_bytes or None
        self.kept = 0
        self.stored = 0  # bytes really written to the log
        self.dropped = 0
        self.open = True
        self.write_error = None

    def pump(self):
        """Copy what is readable now (a bounded amount, so timers still run); False at EOF."""
        for _ in range(64):
            if not self.open:
                break
            try:
                data = os.read(self.fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return True
            if not data:
                self.open = False
                break
            self._keep(data)
        return self.open

    def _keep(self, data):
        if self.max_bytes is not None and self.kept + len(data) > self.max_bytes:
            room = max(0, self.max_bytes - self.kept)
            self.dropped += len(data) - room
            data = data[:room]
        if data and self.write_error is None:
            try:
                if self.log_fd is None:
                    self.log_fd = self.open_log()
                view = memoryview(data)
                while view:
                    n = os.write(self.log_fd, view)
                    self.stored += n
                    view = view[n:]
            except OSError as e:  # a full disk loses output, never the job
                self.write_error = e
        self.kept += len(data)

    def close(self, note=None):
        self.pump()  # what the job wrote before it exited (a child holding the pipe: we stop here)
        os.close(self.fd)
        if note is not None and self.log_fd is None and self.write_error is None:
            try:
                self.log_fd = self.open_log()
            except OSError as e:
                self.write_error = e
        if self.log_fd is None:
            return
        if note is not None and self.write_error is None:
            try:
                self.stored += os.write(self.log_fd, f"\n[queuectl: {note}]\n".encode())
            except OSError:
                pass
        if self.dropped and self.write_error is None:
            note = f"\n[queuectl: {self.dropped} more bytes of output dropped: over max-log-bytes={self.max_bytes}]\n"
            try:
                os.write(self.log_fd, note.encode())
            except OSError:
                pass
        os.close(self.log_fd)


class Waiter:
    """Wait for a child's exit, pumping its output, and waking early for a deadline or a signal."""

    def __init__(self, pid, wakeup_fd, pump=None):
        self.pid = pid
        self.wakeup_fd = wakeup_fd
        self.pump = pump
        self.pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(pid)
            except OSError:
                self.pidfd = None

    def wait(self, timeout):
        """The wait status if the child exited within TIMEOUT seconds, else None.

        Returns None early when a signal arrives (the wakeup fd), so the caller can react.
        """
        end = time.monotonic() + max(0.0, timeout)
        delay = 0.0005
        while True:
            done = self._reap()
            if done is not None:
                return done
            left = end - time.monotonic()
            if left <= 0:
                return None
            fds = [fd for fd in (self.pidfd, self.wakeup_fd) if fd is not None]
            if self.pump is not None and self.pump.open:
                fds.append(self.pump.fd)
            if self.pidfd is None:  # no pidfd (not Linux >= 5.3): poll the exit, gently
                left = min(left, delay)
                delay = min(delay * 2, 0.02)
            try:
                ready, _, _ = select.select(fds, [], [], left)
            except InterruptedError:
                ready = []
            if self.pump is not None and self.pump.fd in ready:
                self.pump.pump()
            if self.wakeup_fd is not None and self.wakeup_fd in ready:
                return self._reap()

    def _reap(self):
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        return status if pid else None

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def drain_wakeup(fd):
    if fd is None:
        return
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise


def run(spec):
    """Run one attempt (a Spec) to its end; returns its Attempt. Its times are wall-clock (they go
    into the job's history); its timeout is measured on the monotonic clock, which no clock step moves."""
    attempt = Attempt(time.time())
    if spec.cwd is not None and spec.owner is None and not os.path.isdir(spec.cwd):
        attempt.error = f"could not start: cwd {spec.cwd!r} does not exist or is not a folder"
        attempt.finished = time.time()
        return attempt
    pump = OutputPump(spec.open_log, spec.max_log_bytes)
    contain = spec.contain
    try:
        if spec.owner is not None:
            pid = spawn_as(spec.owner, spec.command, spec.env, spec.cwd, pump.write_end)
        else:
            pid = spawn(spec.command, spec.env, spec.cwd, pump.write_end)
    except OSError as e:
        os.close(pump.fd)
        attempt.error = f"could not start: {e.strerror or e}"
        attempt.finished = time.time()
        return attempt
    finally:
        os.close(pump.write_end)
    if spec.on_spawn is not None:
        spec.on_spawn(pid)
    waiter = Waiter(pid, spec.wakeup_fd, pump)
    tick = spec.tick or 3600.0
    sooner = spec.after_spawn() if spec.after_spawn is not None else None
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    status = None
    try:
        if spec.should_cancel is not None and spec.should_cancel():  # asked before we could see it
            status = _cancel(waiter, pid, contain, attempt)
        while status is None:
            wait_for = min(tick, sooner) if sooner is not None else tick
            if deadline is not None:
                wait_for = min(wait_for, deadline - time.monotonic())
            status = waiter.wait(wait_for)
            if status is not None:
                break
            drain_wakeup(spec.wakeup_fd)
            if spec.should_abort and spec.should_abort():
                status = _stop_group(waiter, pid, contain)
                attempt.interrupted = True
                attempt.error = "interrupted: the worker was told to stop now"
                break
            if spec.should_cancel is not None and spec.should_cancel():
                status = _cancel(waiter, pid, contain, attempt)
                break
            if deadline is not None and time.monotonic() >= deadline:
                status = _stop_group(waiter, pid, contain)
                attempt.error = f"timed out after {spec.timeout:g} s; the job's process group was killed"
                break
            if contain is not None:
                contain.reap(pid)
            if spec.on_tick:
                sooner = spec.on_tick()
    finally:
        note = None
        if contain is not None:  # what the job left running dies with the attempt
            ended = status is not None and attempt.error is None
            try:
                attempt.leftovers = contain.clear(pid, KILL_GRACE if ended else 0.0)
            except OSError:
                pass  # best effort: the attempt's outcome stands
            if ended and attempt.leftovers:
                note = f"killed {attempt.leftovers} process(es) the job left running when it ended"
        waiter.close()
        pump.close(note)
        attempt.log_written = pump.stored > 0  # an empty log (its writes all failed) keeps nothing
        attempt.log_error = pump.write_error
    attempt.finished = time.time()
    if attempt.error is None:
        attempt.exit_code = exit_code_of(status)
    return attempt


def _cancel(waiter, pid, contain, attempt):
    from queuectl.layout import CANCELLED

    attempt.cancelled = True
    attempt.error = CANCELLED
    return _stop_group(waiter, pid, contain)


def _stop_group(waiter, pgid, contain=None):
    """TERM the whole process group (and with CONTAIN every process the job started), KILL it
    after a short grace; returns the leader's status."""
    _signal_job(pgid, signal.SIGTERM, contain)
    status = waiter.wait(KILL_GRACE)
    _signal_job(pgid, signal.SIGKILL, contain)  # also ends any child that outlived the leader
    if status is None:
        status = waiter.wait(KILL_GRACE)
    return status


def _signal_job(pgid, sig, contain):
    kill_group(pgid, sig)
    if contain is not None:
        contain.signal(pgid, sig)
