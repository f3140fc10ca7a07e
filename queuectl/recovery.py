"""Recovery: take back what dead processes left in processing/, tmp/ and workers/.

Any live worker may run it. A lost claim is first taken over (an atomic rename: of two recovering
workers one wins), then handled by the rule its operation names in layout.OPS (`on_lost`): the
rules are RULES below, one function each, and a new operation that reuses one needs no change here.
"""

import os
import signal
import time

from queuectl import contain, counters, policy
from queuectl import layout as L
from queuectl.errors import JobInvalid, Untrusted
from queuectl.intake import adoption_identity, invalid_reason
from queuectl.job import read_limit
from queuectl.layout import BY_OP
from queuectl.owners import user_name
from queuectl.procs import here, liveness, process_uid, split_worker_id
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


def claim_is_lost(spool, claim, fs_now, lease, claimed_at):
    """Has CLAIM no live holder? A claim is honoured only while a live worker really holds it:
    its holder dead (holder_is_dead) loses it; so does a live process that is not the worker the
    claim names (pid 1, a reused pid of another program): once the claim is older than LEASE, the
    holder's heartbeat must exist, belong to the uid the holder runs as (where /proc shows it), and
    name the claim among its `claims`. A younger claim is a command's (dlq retry) or a worker's
    before its next heartbeat. Another PID namespace: the lease alone decides, as before."""
    try:
        alive = liveness(claim.holder)
    except ValueError:
        return True
    if alive is not True:
        return holder_is_dead(spool, claim.holder, fs_now, lease, claimed_at)
    if fs_now - claimed_at <= lease:
        return False
    proof = spool.heartbeat_with_owner(claim.holder)
    if proof is None:
        return True
    uid, data = proof
    runs_as = process_uid(split_worker_id(claim.holder).pid)
    if runs_as is not None and uid != runs_as:
        return True  # a heartbeat planted by another user vouches for nothing
    claims = data.get("claims")
    return not (isinstance(claims, list) and claim.name in claims)


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
    def __init__(self, spool, settings, log, held=None, owners=None):
        self.spool = spool
        self.settings = settings
        self.log = log
        self.held = held  # () -> names of the claims this worker holds (None: a command, holds none)
        self.owners = owners  # () -> uids whose jobs this worker rewrites (None: anyone's)
        self.returned = []  # names recovery put back in pending/: the worker reads them at once
        self.counts = counters.zero()  # lost attempts it counted, by what they left their job as
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
        self.requests()
        self.heartbeats(fs_now)
        self.tmp(now, fs_now)

    def claims(self, now, fs_now):
        lease = self.settings["lease-seconds"]
        for claim in self.spool.claims():
            if claim.holder == self.spool.wid:
                if claim.op == "adopt":  # ours, and we are not adopting now: a fault stranded it
                    self.finish_or_put_back(claim, claim.holder, None, now)
                elif self.held is not None and claim.name not in self.held():
                    claimed_at = self.spool.claimed_at(claim)  # ours by name, not held: planted, or stranded
                    if claimed_at is not None:
                        self.apply_rule(claim, claim.holder, claimed_at, now)
                continue
            claimed_at = self.spool.claimed_at(claim)
            if claimed_at is not None and claim_is_lost(self.spool, claim, fs_now, lease, claimed_at):
                self.recover(claim, claimed_at, now)

    def recover(self, claim, claimed_at, now):
        kill_orphans(claim.name)  # wherever its holder ran: the claim's name is unique
        self._unreachable_orphans(claim.holder)
        # a holder alive by its pid keeps its jobs: a claim planted under a live worker's id (one its
        # heartbeat does not name) is lost, but that worker's own jobs must not be killed for it
        if here(claim.holder) and liveness(claim.holder) is not True:
            killed = contain.kill_lost(claim.holder)  # all its jobs left, escapees included (cgroup)
            if killed:
                self.log(f"killed {killed} process(es) left running by lost worker {claim.holder}")
        mine = self.spool.take_over(claim)
        if mine is None:
            return
        self.apply_rule(mine, claim.holder, claimed_at, now)

    def apply_rule(self, mine, holder, claimed_at, now):
        """Handle MINE, a claim this worker now holds of HOLDER's, by its operation's rule."""
        if mine.job_id is not None and self.spool.locate(mine.job_id, include_processing=False):
            self.spool.drop(mine)  # its transition had committed: the claim is a stale copy
            return
        self.rules[BY_OP[mine.op].on_lost](mine, holder, claimed_at, now)

    def _unreachable_orphans(self, holder):
        """Say so when the processes HOLDER left may be out of this worker's reach (another
        user's, which /proc may hide and which it may not kill)."""
        uid = self.spool.heartbeat_owner(holder)
        if uid is not None and uid != os.geteuid() and os.geteuid() != 0:
            self.log(f"lost worker {holder} ran as uid {uid}: processes of its job, if any are left, cannot be killed by uid {os.geteuid()}")

    # -- the rules ------------------------------------------------------------------------------

    def count_lost_attempt(self, claim, holder, claimed_at, now):
        """A worker died running an attempt: it counts as failed (`worker lost`). Only for a job
        whose owner this worker trusts: the rewrite makes the job its own user's. Another owner's
        file goes back to pending/ unchanged (still its owner's), for a worker that trusts it."""
        try:
            job, owner = self.spool.read_obeyed(claim, read_limit(self.settings["max-job-bytes"]), self.owners() if self.owners else None)
        except Untrusted as e:
            name = self.spool.put_back(claim)
            self.log(f"put claim {claim.name!r} of lost worker {holder} back in pending/ as {name!r}, unchanged: "
                     f"it belongs to user {user_name(e.uid)}, whom this worker does not trust")
            return
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
            cancelled=self.spool.requested(job["id"], "cancel", owner),  # asked of the lost worker: done here
        )
        hold = job["state"] == "failed" and self.spool.requested(job["id"], "hold", owner)
        dest = self.spool.finish(claim, job, nb, hold=hold, owner=owner)
        if dest is not None:
            self.counts["cancelled" if policy.was_cancelled(job) else job["state"]] += 1
            self._answered(job["id"], dest[0])
            self.log(f"recovered job {job['id']} from lost worker {holder}: now {'held' if hold else job['state']}")

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

    def _answered(self, job_id, folder):
        """The job is in FOLDER now: in done/, dead/ or held/ a request for it (cancel, hold) has
        been answered, and is removed (as the worker does after its commit)."""
        if folder != "pending":
            self.spool.drop_requests(job_id)

    def _put_back(self, claim):
        name = self.spool.put_back(claim)
        if BY_OP[claim.op].source == "pending":
            self.returned.append(name)

    def requests(self):
        """Remove requests (cancel, hold) answered already: their job is in done/, dead/ or
        held/. A worker or recovery that died after its commit left them. (A job found nowhere
        may be between the fence and the publish of its commit: its request is left.)"""
        for job_id, kind in self.spool.requests():
            where = self.spool.locate(job_id, include_processing=False)
            if where is not None and where[0] != "pending":
                self.spool.drop_request(job_id, kind)

    # -- what dead workers leave beside claims ----------------------------------------------------

    def heartbeats(self, fs_now):
        lease = self.settings["lease-seconds"]
        for wid in self.spool.worker_ids():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, fs_now, lease):
                self._fold(wid)
        for name, wid in self.spool.heartbeat_leftovers():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, fs_now, lease):
                self.spool.drop_heartbeat_leftover(name)
        contain.sweep()  # empty job cgroups of dead workers

    def _fold(self, wid):
        """A dead worker's counts go into the spool's totals as its heartbeat goes."""
        try:
            counters.fold(self.spool, wid)
        except TimeoutError:
            self.log(f"counters.json.lock held for over {counters.LOCK_TIMEOUT:g} s: the heartbeat of lost worker {wid} stays until the next pass")

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
                if purpose == "purge":  # its job had left done/ or dead/: finish removing it
                    from queuectl import retention

                    retention.finish(self.spool, [name], retention.Freed())
                    self.log(f"finished the interrupted purge of tmp/{name}")
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
            hold = job["state"] == "failed" and self.spool.requested(job["id"], "hold")
            self.spool.roll_forward(stage, job, nb, hold)
            self._answered(job["id"], "held" if hold else L.folder_of(job["state"]) if job["state"] in ("completed", "dead") else "pending")
            self.log(f"finished the interrupted commit of job {job['id']}: now {job['state']}")
        return True
