"""Retention: which finished jobs are old enough to go (the policy, given `now`), and removing
them a batch at a time (transition 17, purge): `queuectl purge` in one go, a worker a step per
loop turn (Sweeper).

A job's age is its file's mtime: queuectl writes a job's new version in tmp/ right before the
rename into done/ or dead/, and a rename keeps the mtime, so the mtime is when the job got there
(one lstat, which a directory scan gives). A rejected file keeps its writer's mtime: its age is
its reason file's, written when it was rejected (its own mtime when it has no reason).
"""

import random

from queuectl import layout as L
from queuectl.errors import JobInvalid

STATES = ("completed", "dead", "rejected")  # what purge and retention remove; never pending/ or processing/
SETTING = {"completed": "completed-retention", "dead": "dead-retention", "rejected": "rejected-retention"}
BATCH = 16  # jobs removed per batch: one fsync of each folder per batch
STEP = 64  # directory entries a worker looks at per retention step
PASS_EVERY = 60.0  # seconds (monotonic) between the starts of two retention passes of a worker


def is_old(mtime, max_age, now):
    """Is a file whose age starts at MTIME at least MAX_AGE seconds old at NOW?"""
    return now - mtime >= max_age


def max_ages(settings):
    """{state: seconds} of the states that workers keep for a limited time (0: forever, left out)."""
    return {state: settings[key] for state, key in SETTING.items() if settings[key] > 0}


class Freed:
    """What a purge removed (or, dry, would remove)."""

    __slots__ = ("jobs", "files", "bytes")

    def __init__(self):
        self.jobs = self.files = self.bytes = 0

    def count(self, st):
        self.files += 1
        if st is not None and st.st_nlink <= 1:  # a file with another name frees nothing
            self.bytes += st.st_blocks * 512

    def as_dict(self):
        return {"jobs": self.jobs, "files": self.files, "bytes": self.bytes}


def _attempts(job):
    from queuectl.policy import attempt_seq

    return attempt_seq(job) - 1


def _rejected_age(spool, name, mtime):
    """The mtime a rejected/ entry's age starts at, or None when NAME is a reason file that goes
    with its rejected file."""
    if name.endswith(L.REASON_SUFFIX):
        return None if spool.entry_stat("rejected", name[: -len(L.REASON_SUFFIX)]) is not None else mtime
    st = spool.entry_stat("rejected", name + L.REASON_SUFFIX)
    return st.st_mtime if st is not None else mtime


class Purger:
    """Finds old entries of one state's folder as they are scanned (offer), and removes them in
    batches (flush). DRY: counts what would go, removes nothing."""

    def __init__(self, spool, state, max_age, dry=False):
        self.spool, self.state, self.max_age, self.dry = spool, state, max_age, dry
        self.folder = L.folder_of(state)
        self.batch = []
        self.freed = Freed()

    def offer(self, name, ino, mtime, now):
        """Consider one scanned entry; flushes when a batch is full. True if it was old."""
        if self.state == "rejected":
            mtime = _rejected_age(self.spool, name, mtime)
            if mtime is None:
                return False
        elif L.parse_final(name) is None:
            return False  # not a job file (a stray name): not ours to remove
        if not is_old(mtime, self.max_age, now):
            return False
        self.batch.append((name, ino))
        if len(self.batch) >= BATCH:
            self.flush()
        return True

    def flush(self):
        batch, self.batch = self.batch, []
        if not batch:
            return
        if self.state == "rejected":
            self._rejected(batch)
        elif self.dry:
            self._jobs_dry(batch)
        else:
            self._jobs(batch)

    def _rejected(self, batch):
        files = []
        for name, _ in batch:
            self.freed.jobs += not name.endswith(L.REASON_SUFFIX)
            for n in (name, name + L.REASON_SUFFIX) if not name.endswith(L.REASON_SUFFIX) else (name,):
                st = self.spool.entry_stat("rejected", n)
                if st is not None:
                    self.freed.count(st)
                    files.append(("rejected", n))
        if not self.dry:
            self.spool.remove(files)

    def _jobs_dry(self, batch):
        for name, _ in batch:
            st = self.spool.entry_stat(self.folder, name)
            try:
                job = self.spool.read(self.folder, name)
            except (OSError, JobInvalid):
                continue
            self.freed.jobs += 1
            self.freed.count(st)
            for _, _, lst in self.spool.leftovers(job["id"], job.get("token"), _attempts(job)):
                self.freed.count(lst)

    def _jobs(self, batch):
        expired = [t for t in (self.spool.expire(self.folder, name, ino) for name, ino in batch) if t is not None]
        if not expired:
            return
        self.spool.sync((self.folder, "tmp"))  # the jobs are out before their ids are freed
        finish(self.spool, expired, self.freed)


def finish(spool, expired, freed):
    """Remove the logs and reservations of the jobs in tmp/EXPIRED (`.purge` files), then the
    files themselves (the second half of a purge; recovery calls it for a dead purger's)."""
    files, tmps = [], []
    for tmp in expired:
        st = spool.entry_stat("tmp", tmp)
        if st is None:
            continue  # RACE: recovery finished it for us (we were frozen past our lease)
        try:
            job = spool.read_expired(tmp)
        except (OSError, JobInvalid):
            job = None  # it was a job in done/ or dead/; it goes all the same
        freed.jobs += 1
        freed.count(st)
        tmps.append(("tmp", tmp))
        if job is not None:
            for folder, name, lst in spool.leftovers(job["id"], job.get("token"), _attempts(job)):
                freed.count(lst)
                files.append((folder, name))
    spool.remove(files)
    spool.remove(tmps)


def purge(spool, states, older_than, now, dry=False):
    """Remove the jobs of STATES (see STATES) whose age is at least OLDER_THAN seconds at NOW,
    with their logs and id reservations. Returns Freed."""
    total = Freed()
    for state in states:
        p = Purger(spool, state, older_than, dry)
        for name, ino, mtime in spool.scan(L.folder_of(state)):
            p.offer(name, ino, mtime, now)
        p.flush()
        for k in Freed.__slots__:
            setattr(total, k, getattr(total, k) + getattr(p.freed, k))
    return total


class Sweeper:
    """A worker's retention: every PASS_EVERY seconds a pass over done/, dead/ and rejected/,
    STEP entries per step (a scan resumed between steps), old ones removed in batches. A step
    costs a few dozen lstats, plus a batch's renames, unlinks and fsyncs when it finds old jobs:
    the work follows what there is to remove, and no step holds up the next job for long."""

    def __init__(self, spool, settings, log):
        self.spool, self.settings, self.log = spool, settings, log
        self.next_pass = 0.0
        self.todo = []  # the states left in this pass
        self.scan = self.purger = None
        self.freed = Freed()

    def busy(self):
        """Is a pass under way (the worker should step again soon, not sleep)?"""
        return self.scan is not None or bool(self.todo)

    def due_in(self, mono):
        return 0.0 if self.busy() else max(0.0, self.next_pass - mono)

    def step(self, now, mono):
        """Look at up to STEP entries (starting a pass if one is due); NOW dates the files."""
        if not self.busy():
            if mono < self.next_pass:
                return
            self.next_pass = mono + PASS_EVERY * random.uniform(0.9, 1.1)  # workers drift apart
            ages = max_ages(self.settings)
            self.todo = [s for s in STATES if s in ages]
        try:
            self._look(now)
        except OSError:
            self.close()  # a fault (logged by the worker): this pass ends; the next starts afresh
            self.todo = []
            raise

    def _look(self, now):
        looked = 0
        while looked < STEP and (self.scan is not None or self.todo):
            if self.scan is None:
                state = self.todo.pop(0)
                self.purger = Purger(self.spool, state, self.settings[SETTING[state]])
                self.scan = self.spool.scan(L.folder_of(state))
            for name, ino, mtime in self.scan:
                self.purger.offer(name, ino, mtime, now)
                looked += 1
                if looked >= STEP:
                    break
            else:
                self._end_scan()

    def _end_scan(self):
        self.scan = None
        self.purger.flush()
        f = self.purger.freed
        if f.jobs:
            self.log(f"retention: removed {f.jobs} {self.purger.state} job(s) older than {self.purger.max_age:g} s ({f.files} files, {f.bytes} bytes)")
        self.purger = None

    def close(self):
        if self.scan is not None:
            self.scan.close()
        self.scan = self.purger = None
