"""Finished attempts on their way to being durable.

Settling costs an fsync, a wait on the disk about as long as starting a trivial job, so a worker
settles while its next job runs, a batch at a time: fewer, larger batches share their flushes.
Until then the job stays claimed: a worker that dies meanwhile has its attempts counted as lost
and re-run, never lost.
"""

import time

from queuectl import policy
from queuectl.spool import Commit

SETTLE_BATCH = 16  # finished attempts settled together at most...
SETTLE_DELAY = 0.01  # ...or once the oldest has waited this long (seconds)


class Finished:
    """An ended attempt, not yet durable. record() turns it into its job's next version: a Commit."""

    __slots__ = ("claim", "job", "attempt", "log", "commit", "owner")

    def __init__(self, claim, job, attempt, log, owner=None):
        self.claim, self.job, self.attempt, self.log, self.commit = claim, job, attempt, log, None
        self.owner = owner  # carried from the claim: the next version is its owner's (system spool)

    def record(self, wid, settings, requested):
        """REQUESTED(id, kind): is there such a request for the job (Spool.requested)? Asked
        here, when the attempt is made durable: a `queuectl cancel` or `hold` that came while it
        ran, too late to stop it, still decides where a failed attempt goes."""
        if self.commit is not None:
            return
        a = self.attempt
        job_id = self.job["id"]
        cancelled = a.cancelled or requested(job_id, "cancel", self.owner)
        job, not_before = policy.record_attempt(
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
            cancelled=cancelled,
        )
        hold = job["state"] == "failed" and requested(job_id, "hold", self.owner)
        self.commit = Commit(self.claim, job, not_before, hold=hold, answers=cancelled or hold, owner=self.owner)


class Unsettled:
    """Finished attempts the worker makes durable while its next job runs (see the module doc)."""

    def __init__(self, spool, settings):
        self.spool = spool
        self.settings = settings
        self.items = []
        self.oldest = 0.0  # when the oldest item was added (monotonic)

    def __len__(self):
        return len(self.items)

    def add(self, claim, job, attempt, log, owner=None):
        if not self.items:
            self.oldest = time.monotonic()
        self.items.append(Finished(claim, job, attempt, log, owner))

    def due(self):
        """Worth settling now: SETTLE_BATCH results, or the oldest waiting SETTLE_DELAY seconds.
        Fewer, larger batches share their file-system flushes."""
        return bool(self.items) and (len(self.items) >= SETTLE_BATCH or time.monotonic() - self.oldest >= SETTLE_DELAY)

    def due_in(self):
        """Seconds until due() turns true (0 if it is), or None when nothing waits."""
        if not self.items:
            return None
        return max(0.0, SETTLE_DELAY - (time.monotonic() - self.oldest))

    def settle(self):
        """Record every queued attempt and commit them in one batch (Spool.commit).

        Returns ([Commit] that ended: published or taken over, the OSError that stopped the batch
        or None). What did not end stays queued, its job still claimed, and is never published
        twice (Spool.commit goes on where it stopped)."""
        for item in self.items:
            item.record(self.spool.wid, self.settings, self.spool.requested)
        error = None
        try:
            self.spool.commit([i.commit for i in self.items])
        except OSError as e:
            error = e
        done = [i.commit for i in self.items if i.commit.outcome is not None]
        self.items = [i for i in self.items if i.commit.outcome is None]
        return done, error
