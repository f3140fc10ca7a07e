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
from queuectl.job import read_limit
from queuectl.layout import BY_OP
from queuectl.procs import here, liveness
from queuectl.runner import CLAIM_ENV

TMP_GRACE = 3600  # seconds before a writer's unfinished file in tmp/ is moved to rejected/


def holder_is_dead(spool, holder, fs_now, lease, claimed_at=None):
    """Is the process behind worker id HOLDER gone? In this PID namespace its pid tells (PID reuse
    is caught by the start time); elsewhere, or when the pid cannot tell, the lease does: its
    heartbeat (or, for a claim, the claim itself) older than LEASE seconds on the spool's clock
    FS_NOW (Spool.fs_now)."""
    try:
        alive = liveness(holder)
    except ValueError:
        return True
    if alive is not None:
        return not alive
    seen = max(filter(None, (spool.heartbeat_mtime(holder), claimed_at)), default=None)
    return seen is None or fs_now - seen > lease


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
        self.returned = []  # names recovery put back in pending/: the worker reads them at once
        self.rules = {
            "count-lost-attempt": self.count_lost_attempt,
            "finish-or-put-back": self.finish_or_put_back,
            "put-back": self.put_back,
        }

    def run(self, now):
        """One pass. NOW (this host's clock) dates what recovery writes; the ages that decide
        whether a holder is lost are measured on the spool's own clock (Spool.fs_now)."""
        fs_now = self.spool.fs_now(now)
        self.claims(now, fs_now)
        self.heartbeats(fs_now)
        self.tmp(now, fs_now)

    def claims(self, now, fs_now):
        lease = self.settings["lease-seconds"]
        for claim in self.spool.claims():
            if claim.holder == self.spool.wid:
                if claim.op == "adopt":  # ours, and we are not adopting now: a fault stranded it
                    self.finish_or_put_back(claim, claim.holder, None, now)
                continue
            claimed_at = self.spool.claimed_at(claim)
            if claimed_at is not None and holder_is_dead(self.spool, claim.holder, fs_now, lease, claimed_at):
                self.recover(claim, claimed_at, now)

    def recover(self, claim, claimed_at, now):
        kill_orphans(claim.name)  # wherever its holder ran: the claim's name is unique
        self._unreachable_orphans(claim.holder)
        if here(claim.holder):
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

    def _unreachable_orphans(self, holder):
        """Say so when the processes HOLDER left may be out of this worker's reach (another
        user's, which /proc may hide and which it may not kill)."""
        uid = self.spool.heartbeat_owner(holder)
        if uid is not None and uid != os.geteuid() and os.geteuid() != 0:
            self.log(f"lost worker {holder} ran as uid {uid}: processes of its job, if any are left, cannot be killed by uid {os.geteuid()}")

    # -- the rules ------------------------------------------------------------------------------

    def count_lost_attempt(self, claim, holder, claimed_at, now):
        """A worker died running an attempt: it counts as failed (`worker lost`)."""
        try:
            job, owner = self.spool.read_obeyed(claim, read_limit(self.settings["max-job-bytes"]))
        except JobInvalid as e:
            name = self.spool.reject(claim, f"claimed job file is broken: {e}", now)
            self.log(f"recovered claim {claim.name!r} was broken; kept as rejected/{name}")
            return
        if job.get("state") == "dead":  # a `dlq retry` of the version before claim operations
            if self.spool.finish(claim, job, owner=owner) is not None:  # (its claim looked like a run's)
                self.log(f"put job {job['id']} back in dead/ (interrupted dlq retry of an older queuectl by {holder})")
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
        if self.spool.finish(claim, job, nb, owner) is not None:
            self.log(f"recovered job {job['id']} from lost worker {holder}: now {job['state']}")

    def put_back(self, claim, holder, claimed_at, now):
        """A command died moving a job: the job goes back where it was, unchanged."""
        self._put_back(claim)
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
            self._put_back(claim)

    def _put_back(self, claim):
        name = self.spool.put_back(claim)
        if BY_OP[claim.op].source == "pending":
            self.returned.append(name)

    # -- what dead workers leave beside claims ----------------------------------------------------

    def heartbeats(self, fs_now):
        lease = self.settings["lease-seconds"]
        for wid in self.spool.worker_ids():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, fs_now, lease):
                self.spool.remove_heartbeat(wid)
        for name, wid in self.spool.heartbeat_leftovers():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, fs_now, lease):
                self.spool.drop_heartbeat_leftover(name)
        contain.sweep()  # empty job cgroups of dead workers

    def tmp(self, now, fs_now):
        lease = self.settings["lease-seconds"]
        for name, owner, purpose, mtime in self.spool.tmp_files():
            if owner is not None:
                if owner == self.spool.wid or not holder_is_dead(self.spool, owner, fs_now, lease, mtime):
                    continue
                if purpose == "enqueue" and self._roll_forward(name):
                    continue
                if purpose == "fence" and not self._finish_commit(name, now):
                    continue
                self.spool.drop_tmp(name)  # a half-done rewrite (the job's claim still holds it), or an old copy
            elif fs_now - mtime > TMP_GRACE:
                kept = self.spool.reject_tmp(name, "left in tmp/ for over an hour: its writer never renamed it into pending/", now)
                self.log(f"moved abandoned tmp/{name} to rejected/{kept}")

    def _roll_forward(self, name):
        try:
            job = self.spool.read("tmp", name, read_limit(self.settings["max-job-bytes"]))
        except (JobInvalid, OSError):
            return False
        if job.get("token") and self.spool.reservation(job["id"]) == job["token"]:
            if not self.spool.locate(job["id"], include_processing=True):
                self.spool.roll_forward(name, job)
                self.log(f"finished the interrupted enqueue of job {job['id']}")
                return True
        return False

    def _finish_commit(self, fence, now):
        """A process died between the fence and the publish of a commit (Spool.commit): its
        claim is the fence, its result the stage beside it. Publish the stage. True when the
        fence is an old copy to remove."""
        stage = self.spool.stage_of(fence)
        if stage is None:
            return True  # published: the fence is an old copy
        try:
            job = self.spool.read("tmp", stage, 1 << 30)
        except (JobInvalid, OSError) as e:  # a stage is complete before its fence: never seen, but keep both
            for name in (stage, fence):
                self.spool.reject_tmp(name, f"an interrupted commit whose new version cannot be read ({e})", now)
            return False
        if not self.spool.locate(job["id"], include_processing=True):
            nb = policy.next_run(job, now, self.settings["backoff-base"], self.settings["backoff-max"])
            self.spool.roll_forward(stage, job, nb)
            self.log(f"finished the interrupted commit of job {job['id']}: now {job['state']}")
        return True
