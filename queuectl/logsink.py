"""Log lines that never block the process writing them.

A worker's stderr may be a pipe that nobody reads any more (the program that started the pool
stopped reading it, a terminal on hold): a blocking write there would hold the worker, and its
job, for good, deaf to stop requests. So a worker (and the supervisor) write their log lines
without blocking: a line that does not fit waits in a small queue; once the queue is full, lines
are dropped and counted, and a note says how many as soon as writing works again.

How a write is kept from blocking depends on what stderr is. A pipe, FIFO or terminal is opened
again through /proc/self/fd: a new open file description, whose O_NONBLOCK changes nothing for
the other processes that share the original one (the supervisor, the user's shell). A socket (the
systemd journal) is written with MSG_DONTWAIT. A regular file is written as it is: a write to a
file does not wait for a reader. Where none of this works, writes block, as before.
"""

import os
import select
import socket
import stat
import sys
import time
from collections import deque

rotation = None  # a detached pool's log rotation (pool._Rotation), called before each line; inherited by fork
LINE_MAX = getattr(select, "PIPE_BUF", 4096)  # a write this size or less to a pipe is atomic
QUEUE_BYTES = 64 * 1024  # lines waiting for a reader, at most; the rest are dropped and counted


def _writer(fd):
    """(write function, fd to select on for writability, close function or None) for FD."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))
        return (lambda data: sock.send(data, socket.MSG_DONTWAIT)), sock.fileno(), sock.close
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            new = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        except OSError:  # no /proc: blocking writes, as before
            return (lambda data: os.write(fd, data)), fd, None
        return (lambda data: os.write(new, data)), new, (lambda: os.close(new))
    return (lambda data: os.write(fd, data)), fd, None


class LogSink:
    """Whole lines to STREAM's fd (default: sys.stderr's), never blocking (see the module doc).

    NOTE(text) formats the sink's own note about dropped lines as a log line."""

    def __init__(self, stream=None, note=lambda text: f"queuectl: {text}\n"):
        stream = stream if stream is not None else sys.stderr
        self.note = note
        self.queue = deque()  # encoded lines waiting to be written, oldest first
        self.queued = 0
        self.dropped_lines = self.dropped_bytes = 0  # since the last note
        self._stream = None
        self._send = self._fd = self._close = None
        try:
            self._send, self._fd, self._close = _writer(stream.fileno())
        except (AttributeError, ValueError, OSError):  # no fd (a StringIO): write to the stream itself
            self._stream = stream

    def write(self, line):
        """Queue LINE (a str ending in a newline) and write what can be written now."""
        if rotation is not None:
            rotation()
        data = line.encode("utf-8", "replace")
        if len(data) > LINE_MAX:
            data = data[: LINE_MAX - 16] + b" [...cut]\n"
        if self._stream is not None:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                pass
            return
        if self.queued + len(data) > QUEUE_BYTES:
            self.dropped_lines += 1
            self.dropped_bytes += len(data)
        else:
            self._note_drops()
            self._append(data)
        self.flush()

    def _append(self, data):
        self.queue.append(data)
        self.queued += len(data)

    def _note_drops(self):
        if self.dropped_lines:
            text = f"{self.dropped_lines} log line(s) ({self.dropped_bytes} bytes) dropped: stderr was not being read"
            self._append(self.note(text).encode("utf-8", "replace"))
            self.dropped_lines = self.dropped_bytes = 0

    def fileno(self):
        """The fd to wait on (select for writing) while lines are pending."""
        return self._fd

    @property
    def pending(self):
        return bool(self.queue) or bool(self.dropped_lines)

    def flush(self):
        """Write queued lines until one would block; True when none is left."""
        if self._stream is not None:
            return True
        if not self.queue and self.dropped_lines:
            self._note_drops()
        while self.queue:
            data = self.queue[0]
            try:
                n = self._send(data)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # no reader at all (EPIPE), a full disk: the line is lost
                n = len(data)
            if n < len(data):  # a partial write (a socket, or a line over PIPE_BUF)
                self.queue[0] = data[n:]
                self.queued -= n
                return False
            self.queue.popleft()
            self.queued -= n
        return True

    def close(self, timeout=1.0):
        """Write what is queued, waiting TIMEOUT seconds at most for a reader; then let go."""
        end = time.monotonic() + timeout
        while not self.flush():
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [self._fd], [], left)
            except (OSError, ValueError):
                break
        if self._close is not None:
            try:
                self._close()
            except OSError:
                pass
            self._close = None
