"""Stop signals, and who sent them.

A worker obeys a stop request (SIGTERM, SIGINT) from its supervisor or its operator, and ignores
one sent by its own job: a job that runs `kill -TERM $PPID` must not be able to stop the pool.
Python's signal handlers do not say who sent a signal; sigwaitinfo(2) does. So a worker blocks
SIGTERM and SIGINT in every thread and reads them in a small thread (StopSignals), which looks the
sender up at once, while it may still exist (its process group, session and ancestors: lineage()),
queues what it found and wakes the main loop through its wake-up pipe. The main loop, which knows
its jobs, judges. The supervisor reads them the same way, in its main loop (pool.py).

Stop requests count per sender (Requests): the first, from anyone, is a graceful stop; a second one
from the same sender (the supervisor passing on a second Ctrl-C, a shell's `kill` run twice,
`worker stop` escalating) stops the running job too. Requests from different senders (two
`worker stop` at once, systemd and the supervisor) add up to one graceful stop.

Where there is no sigwaitinfo (not Linux), stop signals reach Python handlers and every one counts,
from an unknown sender.
"""

import os
import signal
import threading
import time
from collections import deque, namedtuple

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HAVE_SIGINFO = hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask") and hasattr(signal, "pthread_kill")

Sent = namedtuple("Sent", "signo pid at lineage")
Sent.__doc__ = """A stop signal received: its number; the sender's pid (0: the kernel or a process
outside this pid namespace; None: unknown); when (time.monotonic()); and the sender's lineage,
[(pid, pgid, sid)] from the sender up through its ancestors, or None when the sender was gone
before it could be looked at."""


def signame(signo):
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _stat(pid):
    """(ppid, pgid, sid) of PID from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def lineage(pid, depth=64):
    """[(pid, pgid, sid)] of PID, then of its parent, and so on up to init; None if PID is gone.

    A zombie still has its entry (it is gone once reaped). Without /proc: PID's own entry only."""
    out = []
    seen = set()
    while pid > 0 and pid not in seen and len(out) < depth:
        seen.add(pid)
        st = _stat(pid)
        if st is None:
            break
        ppid, pgid, sid = st
        out.append((pid, pgid, sid))
        pid = ppid
    if out or os.path.isdir("/proc/self"):
        return out or None
    try:
        return [(pid, os.getpgid(pid), os.getsid(pid))]
    except OSError:
        return None


def sent_from(info):
    """A Sent from a sigwaitinfo/sigtimedwait result, the sender looked up at once."""
    at, pid = time.monotonic(), info.si_pid
    try:
        found = lineage(pid) if pid > 0 else None
    except (OSError, ValueError, IndexError):  # a /proc entry torn down while read
        found = None
    return Sent(info.si_signo, pid, at, found)


def descends_from(sent, pid):
    """Was the sender a descendant of PID (PID itself excluded)? False when unknown."""
    return bool(sent.lineage) and any(p == pid for p, _, _ in sent.lineage[1:])


class Requests:
    """Stop requests counted per sender: level 1 after the first (finish the running job, then
    exit), 2 once one sender has asked twice (stop the running job too)."""

    def __init__(self):
        self.by_sender = {}  # sender pid (None: unknown) -> how many times it asked
        self.level = 0
        self.since = None  # when the first came (time.time())

    def add(self, sender):
        """Count one request from SENDER; True if it raised the level."""
        n = self.by_sender[sender] = self.by_sender.get(sender, 0) + 1
        if self.since is None:
            self.since = time.time()
        old, self.level = self.level, max(self.level, min(n, 2))
        return self.level > old

    def senders(self):
        return sorted(p for p in self.by_sender if p is not None)


class StopSignals:
    """SIGTERM and SIGINT, read by a thread with sigwaitinfo (see the module doc).

    start() must run before the process starts any other thread: threads inherit the signal mask,
    and a thread that does not block them could take a signal first. Children must not inherit
    the mask: runner.spawn starts jobs with an empty one."""

    def __init__(self, wake_fd):
        self.wake_fd = wake_fd
        self.queue = deque()
        self._thread = None
        self._closing = False
        self._old_mask = None
        self._old_handlers = {}

    def start(self):
        for sig in STOP_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._handler)
        if not HAVE_SIGINFO:
            return
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        self._thread = threading.Thread(target=self._read, name="queuectl-stop-signals", daemon=True)
        self._thread.start()

    def _handler(self, signum, frame):
        """A stop signal that reached Python: no sigwaitinfo here, or one that came in the moment the
        mask was lifted to start a job (runner.spawn). Its sender is unknown."""
        self.queue.append(Sent(signum, None, time.monotonic(), None))

    def _read(self):
        while True:
            info = signal.sigwaitinfo(STOP_SIGNALS)
            if self._closing:
                return
            self.queue.append(sent_from(info))
            try:
                os.write(self.wake_fd, b"s")
            except OSError:
                pass  # the pipe is full: the main loop is awake anyway

    def take(self):
        """The stop signals received since the last call, oldest first."""
        out = []
        while self.queue:
            out.append(self.queue.popleft())
        return out

    def close(self):
        """Stop the thread, restore the mask and the handlers (for a worker run inside another
        program; a worker process just exits)."""
        if self._thread is not None:
            self._closing = True
            signal.pthread_kill(self._thread.ident, signal.SIGTERM)  # wakes its sigwaitinfo
            self._thread.join(timeout=2)
            self._thread = None
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            self._old_mask = None
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers = {}
