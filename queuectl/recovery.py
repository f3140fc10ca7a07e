"""Recovery: take back what dead processes left in processing/, tmp/ and workers/.

Any live worker may run it. A lost claim is first taken over (an atomic rename: of two recovering
workers one wins), then handled by the rule its operation names in layout.OPS (`on_lost`): the
rules are RULES below, one function each, and a new operation that reuses one needs no change here.
"""

import os
import signal
import time

from queuectl import contain, policy
from queuectl.errors import JobInvalid
from queuectl.intake import adoption_identity, invalid_reason
from queuectl.layout import BY_OP
from queuectl.procs import hostname, is_alive_here, on_this_host, split_worker_id
from queuectl.runner import CLAIM_ENV

TMP_GRACE = 3600  # seconds before a writer's unfinished file in tmp/ is moved to rejected/


def holder_is_dead(spool, holder, now, lease, claimed_at=None):
    """Is the process behind worker id HOLDER gone? (PID reuse is caught by the start time.)"""
    try:
        host, pid, start = split_worker_id(holder)
    except ValueError:
        return True
    if host == hostname():
        return not is_alive_here(pid, start)
    seen = max(filter(None, (spool.heartbeat_mtime(holder), claimed_at)), default=None)
    return seen is None or now - seen > lease


def kill_orphans(claim_name):
    """Kill the process groups of jobs that a lost worker on this host left running.

    Each job runs with QUEUECTL_CLAIM=<its claim name> in its environment; the job's process group
    is its own session. Only this user's processes can be read, which are the only ones a worker of
    this user could have started.
    """
    needle = f"{CLAIM_ENV}={claim_name}".encode() + b"\0"
    killed = set()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return killed
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read() + b"\0"
        except OSError:
            continue  # RACE: the process ended meanwhile, or is not ours to read
        if b"\0" + needle in b"\0" + env:
            try:
                pgid = os.getpgid(pid)
                os.killpg(pgid, signal.SIGKILL)
                killed.add(pgid)
            except OSError:
                pass  # RACE: it ended by itself meanwhile
    return killed


class Recovery:
    def __init__(self, spool, settings, log):
        self.spool = spool
        self.settings = settings
        self.log = log
        self.rules = {
            "count-lost-attempt": self.count_lost_attempt,
            "finish-or-put-back": self.finish_or_put_back,
            "put-back": self.put_back,
        }

    def run(self, now):
        self.claims(now)
        self.heartbeats(now)
        self.tmp(now)

    def claims(self, now):
        lease = self.settings["lease-seconds"]
        for claim in self.spool.claims():
            if claim.holder == self.spool.wid:
                continue
            claimed_at = self.spool.claimed_at(claim)
            if claimed_at is not None and holder_is_dead(self.spool, claim.holder, now, lease, claimed_at):
                self.recover(claim, claimed_at, now)

    def recover(self, claim, claimed_at, now):
        if on_this_host(claim.holder):
            kill_orphans(claim.name)
            killed = contain.kill_lost(claim.holder)  # all its jobs left, escapees included (cgroup)
            if killed:
                self.log(f"killed {killed} process(es) left running by lost worker {claim.holder}")
        mine = self.spool.take_over(claim)
        if mine is None:
            return
        if mine.job_id is not None and self.spool.locate(mine.job_id, include_processing=False):
            self.spool.drop(mine)  # its transition had committed: the claim is a stale copy
            return
        self.rules[BY_OP[mine.op].on_lost](mine, claim.holder, claimed_at, now)

    # -- the rules ------------------------------------------------------------------------------

    def count_lost_attempt(self, claim, holder, claimed_at, now):
        """A worker died running an attempt: it counts as failed (`worker lost`)."""
        try:
            job = self.spool.read_claim(claim, self.settings["max-job-bytes"])
        except JobInvalid as e:
            name = self.spool.reject(claim, f"claimed job file is broken: {e}", now)
            self.log(f"recovered claim {claim.name!r} was broken; kept as rejected/{name}")
            return
        job, nb = policy.record_attempt(
            job,
            started=claimed_at,
            finished=now,
            exit_code=None,
            error=f"worker lost: {holder} stopped while the job was running",
            worker=holder,
            log=None,
            base=self.settings["backoff-base"],
            maximum=self.settings["backoff-max"],
        )
        self.spool.finish(claim, job, nb)
        self.log(f"recovered job {job['id']} from lost worker {holder}: now {job['state']}")

    def put_back(self, claim, holder, claimed_at, now):
        """A command died moving a job: the job goes back where it was, unchanged."""
        self.spool.put_back(claim)
        self.log(f"put job {claim.job_id} back in {BY_OP[claim.op].source}/ (interrupted {claim.op} by {holder})")

    def finish_or_put_back(self, claim, holder, claimed_at, now):
        """A worker died adopting or rejecting a drop-in: finish what had committed, else put the
        file back in pending/ under its own name, to be adopted again."""
        if self.spool.rejected_as(claim) is not None:  # it was being rejected: finish that
            reason = invalid_reason(self.spool, claim, self.settings["max-job-bytes"])
            self.spool.reject(claim, reason or "rejected by a worker that died before writing why", time.time())
            return
        try:
            doc = self.spool.read_claim(claim, self.settings["max-job-bytes"])
            job_id, token = adoption_identity(claim.origin, doc, self.spool.stat("processing", claim.name))
            adopted = self.spool.reservation(job_id) == token and self.spool.locate(job_id, include_processing=False)
        except (JobInvalid, ValueError, OSError):
            adopted = False
        if adopted:
            self.spool.drop(claim)
        else:
            self.spool.put_back(claim)

    # -- what dead workers leave beside claims ----------------------------------------------------

    def heartbeats(self, now):
        lease = self.settings["lease-seconds"]
        for wid in self.spool.worker_ids():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, now, lease):
                self.spool.remove_heartbeat(wid)
        for name, wid in self.spool.heartbeat_leftovers():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, now, lease):
                self.spool.drop_heartbeat_leftover(name)
        contain.sweep()  # empty job cgroups of dead workers

    def tmp(self, now):
        lease = self.settings["lease-seconds"]
        for name, owner, purpose, mtime in self.spool.tmp_files():
            if owner is not None:
                if owner == self.spool.wid or not holder_is_dead(self.spool, owner, now, lease, mtime):
                    continue
                if purpose == "enqueue" and self._roll_forward(name):
                    continue
                self.spool.drop_tmp(name)  # a half-done rewrite; the job's claim still holds it
            elif now - mtime > TMP_GRACE:
                kept = self.spool.reject_tmp(name, "left in tmp/ for over an hour: its writer never renamed it into pending/", now)
                self.log(f"moved abandoned tmp/{name} to rejected/{kept}")

    def _roll_forward(self, name):
        try:
            job = self.spool.read("tmp", name, self.settings["max-job-bytes"])
        except (JobInvalid, OSError):
            return False
        if job.get("token") and self.spool.reservation(job["id"]) == job["token"]:
            if not self.spool.locate(job["id"], include_processing=True):
                self.spool.roll_forward(name, job)
                self.log(f"finished the interrupted enqueue of job {job['id']}")
                return True
        return False
