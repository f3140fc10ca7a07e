"""Group commit: a worker's finished attempts are made durable off its main thread.

An fsync waits on the disk for a tenth of a millisecond or more, about as long as starting a
trivial job. The main thread hands each result here and goes on to the next claim; this thread
settles whatever has gathered in one batch (spool.settle_many: the fsyncs of a batch share the
disk's flushes). Until its batch commits, a job stays claimed in processing/: a crash before that
is a lost worker, and recovery re-runs the attempt (at-least-once), never loses it.
"""

import threading
import time
from collections import deque

MAX_BATCH = 256
FAULT_BACKOFF_MAX = 30.0


class Committer:
    def __init__(self, spool, fault, wake):
        self.spool = spool
        self.fault = fault  # fault(action, OSError): logs once per distinct error
        self.wake = wake  # wake(): tell the main thread results are ready
        self.committed = deque()  # (job, folder, name, not_before) for the main thread
        self._queue = deque()
        self._cv = threading.Condition()
        self._unsettled = 0
        self._closing = False
        self._abandon = False
        self._thread = threading.Thread(target=self._run, name="queuectl-committer", daemon=True)
        self._thread.start()

    def submit(self, cname, job, not_before):
        with self._cv:
            self._queue.append((cname, job, not_before))
            self._unsettled += 1
            self._cv.notify()

    @property
    def idle(self):
        return self._unsettled == 0

    def _run(self):
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            delay = 0.1
            while True:
                try:
                    dests = self.spool.settle_many(batch)
                    break
                except OSError as e:
                    self.fault("store the results of finished jobs", e)
                    if self._abandon:
                        return  # the claims stay: recovery counts those attempts as lost
                    time.sleep(delay)
                    delay = min(delay * 2, FAULT_BACKOFF_MAX)
            with self._cv:
                for (_, job, nb), (folder, name) in zip(batch, dests):
                    self.committed.append((job, folder, name, nb))
                self._unsettled -= len(batch)
                self._cv.notify_all()
            self.wake()

    def close(self, timeout=None):
        """Commit everything submitted, then stop. With TIMEOUT, give up on a stuck batch after it."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True
            self._thread.join(1.0)
        return self.idle
