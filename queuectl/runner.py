"""Running one attempt: /bin/sh -c COMMAND in its own session, output to a log file.

The worker stays single-threaded: it waits for the child with a pidfd (or a short poll where there
is none) so that it can refresh its heartbeat, enforce the timeout and react to a stop signal.
"""

import errno
import os
import select
import signal
import time

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a job must stop
CLAIM_ENV = "QUEUECTL_CLAIM"  # lets recovery find a lost worker's orphaned job (see recovery.py)


class Attempt:
    """The outcome of one attempt: exit_code (None unless the command ran to an exit) and error."""

    __slots__ = ("exit_code", "error", "started", "finished", "interrupted")

    def __init__(self, started):
        self.started = started
        self.finished = None
        self.exit_code = None
        self.error = None
        self.interrupted = False


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
        )
    import subprocess  # only jobs with a cwd pay for it: posix_spawn has no chdir

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


def exit_code_of(status):
    """A wait status -> the exit code the contract reports: the status, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Waiter:
    """Wait for a child's exit, waking early for a deadline or a signal (via the wakeup fd)."""

    def __init__(self, pid, wakeup_fd):
        self.pid = pid
        self.wakeup_fd = wakeup_fd
        self.pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(pid)
            except OSError:
                self.pidfd = None

    def wait(self, timeout):
        """The wait status if the child exited within TIMEOUT seconds, else None."""
        done = self._reap()
        if done is not None:
            return done
        if self.pidfd is not None:
            fds = [self.pidfd] + ([self.wakeup_fd] if self.wakeup_fd is not None else [])
            try:
                select.select(fds, [], [], max(0.0, timeout))
            except InterruptedError:
                pass
            return self._reap()
        end = time.monotonic() + timeout
        delay = 0.0005
        while True:
            done = self._reap()
            if done is not None or time.monotonic() >= end:
                return done
            time.sleep(min(delay, max(0.0, end - time.monotonic())))
            delay = min(delay * 2, 0.02)

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


def run(command, env, cwd, out_fd, timeout, now, tick=None, wakeup_fd=None, on_tick=None, should_abort=None):
    """Run one attempt to its end.

    on_tick() is called about every TICK seconds while the job runs (heartbeats, settings);
    should_abort() returning True stops the job's whole process group (a second stop signal).
    """
    attempt = Attempt(now)
    if cwd is not None and not os.path.isdir(cwd):
        attempt.error = f"could not start: cwd {cwd!r} does not exist or is not a folder"
        attempt.finished = time.time()
        return attempt
    try:
        pid = spawn(command, env, cwd, out_fd)
    except OSError as e:
        attempt.error = f"could not start: {e.strerror or e}"
        attempt.finished = time.time()
        return attempt
    waiter = Waiter(pid, wakeup_fd)
    deadline = now + timeout if timeout else None
    status = None
    try:
        while status is None:
            wait_for = tick if tick else 3600.0
            if deadline is not None:
                wait_for = min(wait_for, deadline - time.time())
            status = waiter.wait(wait_for)
            if status is not None:
                break
            drain_wakeup(wakeup_fd)
            if should_abort and should_abort():
                status = _stop_group(waiter, pid)
                attempt.interrupted = True
                attempt.error = "interrupted: the worker was told to stop now"
                break
            if deadline is not None and time.time() >= deadline:
                status = _stop_group(waiter, pid)
                attempt.error = f"timed out after {timeout:g} s; the job's process group was killed"
                break
            if on_tick:
                on_tick()
    finally:
        waiter.close()
    attempt.finished = time.time()
    if attempt.error is None:
        attempt.exit_code = exit_code_of(status)
    return attempt


def _stop_group(waiter, pgid):
    """TERM the whole process group, KILL it after a short grace; returns the leader's status."""
    kill_group(pgid, signal.SIGTERM)
    status = waiter.wait(KILL_GRACE)
    kill_group(pgid, signal.SIGKILL)  # also ends any child that outlived the leader
    if status is None:
        status = waiter.wait(KILL_GRACE)
    return status
