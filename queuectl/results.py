"""Finished attempts on their way to being durable.

Settling costs an fsync, a wait on the disk about as long as starting a trivial job, so a worker
settles while its next job runs, a batch at a time: fewer, larger batches share their flushes.
Until then the job stays claimed: a worker that dies meanwhile has its attempts counted as lost
and re-run, never lost.
"""

import time

from queuectl import policy

SETTLE_BATCH = 16  # finished attempts settled together at most...
SETTLE_DELAY = 0.01  # ...or once the oldest has waited this long (seconds)


class Finished:
    """An ended attempt, not yet durable. record() turns it into its job's next version."""

    __slots__ = ("claim", "job", "attempt", "log", "not_before")

    def __init__(self, claim, job, attempt, log):
        self.claim, self.job, self.attempt, self.log, self.not_before = claim, job, attempt, log, None

    def record(self, wid, settings):
        if self.attempt is None:
            return
        a = self.attempt
        self.job, self.not_before = policy.record_attempt(
            self.job,
            started=a.started,
            finished=a.finished,
            exit_code=a.exit_code,
            error=a.error,
            worker=wid,
            log=self.log,
            notes=a.notes,
            base=settings["backoff-base"],
            maximum=settings["backoff-max"],
        )
        self.attempt = None


class Unsettled:
    """Finished attempts the worker makes durable while its next job runs (see the module doc)."""

    def __init__(self, spool, settings):
        self.spool = spool
        self.settings = settings
        self.items = []
        self.oldest = 0.0  # when the oldest item was added

    def __len__(self):
        return len(self.items)

    def add(self, claim, job, attempt, log):
        if not self.items:
            self.oldest = time.time()
        self.items.append(Finished(claim, job, attempt, log))

    def due(self):
        """Worth settling now: SETTLE_BATCH results, or the oldest waiting SETTLE_DELAY seconds.
        Fewer, larger batches share their file-system flushes."""
        return bool(self.items) and (len(self.items) >= SETTLE_BATCH or time.time() - self.oldest >= SETTLE_DELAY)

    def settle(self):
        """Record every queued attempt and commit them in one batch (Spool.finish_many).

        Returns [(job, not_before, (folder, name))] of the committed ones. On an OSError the part
        of the batch that was published leaves the queue; the rest stays, its jobs still claimed."""
        for item in self.items:
            item.record(self.spool.wid, self.settings)
        if not self.items:
            return []
        try:
            dests = self.spool.finish_many([(i.claim, i.job, i.not_before) for i in self.items])
        except OSError as e:
            del self.items[: getattr(e, "published", 0)]
            raise
        done, self.items = self.items, []
        return [(i.job, i.not_before, dest) for i, dest in zip(done, dests)]
