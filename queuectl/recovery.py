"""Recovery: take back what dead processes left in processing/, tmp/ and workers/.

Any live worker may run it; every step starts with an atomic rename (stealing the claim), so two
recovering workers never both act on the same file. The rules are the right-hand columns of the
transition table in spool_layout.md.
"""

import os
import signal
import time

from queuectl import policy
from queuectl import spool as sp
from queuectl.errors import JobInvalid
from queuectl.intake import adoption_identity, invalid_reason
from queuectl.job import read_limit
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


def kill_orphans(claim):
    """Kill the process groups of jobs that a lost worker on this host left running.

    Each job runs with QUEUECTL_CLAIM=<its claim name> in its environment; the job's process group
    is its own session. Only this user's processes can be read, which are the only ones a worker of
    this user could have started.
    """
    needle = f"{CLAIM_ENV}={claim}".encode() + b"\0"
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
            continue
        if b"\0" + needle in b"\0" + env:
            try:
                pgid = os.getpgid(pid)
                os.killpg(pgid, signal.SIGKILL)
                killed.add(pgid)
            except OSError:
                pass
    return killed


class Recovery:
    def __init__(self, spool, settings, log):
        self.spool = spool
        self.settings = settings
        self.log = log

    def run(self, now):
        self.claims(now)
        self.heartbeats(now)
        self.tmp(now)

    def claims(self, now):
        lease = self.settings["lease-seconds"]
        for cname, kind, key, holder in self.spool.claims():
            if holder == self.spool.wid:
                continue
            try:
                claimed_at = os.lstat(self.spool.path("processing", cname)).st_ctime
            except FileNotFoundError:
                continue
            if holder_is_dead(self.spool, holder, now, lease, claimed_at):
                self.recover(cname, kind, key, holder, claimed_at, now)

    def recover(self, cname, kind, key, holder, claimed_at, now):
        if on_this_host(holder):
            kill_orphans(cname)
        mine = sp.reclaim_name(cname, self.spool.wid)
        try:
            os.rename(self.spool.path("processing", cname), self.spool.path("processing", mine))
        except FileNotFoundError:
            return  # another worker is recovering it
        if kind == "adopt":
            return self._recover_adoption(mine, key)
        try:
            job = self.spool.read("processing", mine, read_limit(self.settings["max-job-bytes"]))
        except JobInvalid as e:
            name = self.spool.reject(mine, key + ".json", f"claimed job file is broken: {e}", now)
            self.log(f"recovered claim {cname!r} was broken; kept as rejected/{name}")
            return
        if self.spool.locate(job["id"], include_processing=False):
            os.unlink(self.spool.path("processing", mine))  # its move had committed: a stale copy
            return
        if job.get("state") == "dead":  # an interrupted `dlq retry`: back to the dead-letter queue
            self.spool.unclaim_to(mine, "dead", sp.final_name(job["id"]))
            self.log(f"put job {job['id']} back in dead/ (interrupted dlq retry by {holder})")
            return
        error = f"worker lost: {holder} stopped while the job was running"
        job, nb = policy.record_attempt(
            job,
            started=claimed_at,
            finished=now,
            exit_code=None,
            error=error,
            worker=holder,
            log=None,
            base=self.settings["backoff-base"],
            maximum=self.settings["backoff-max"],
        )
        self.spool.settle(mine, job, nb)
        self.log(f"recovered job {job['id']} from lost worker {holder}: now {job['state']}")

    def _recover_adoption(self, mine, original):
        path = self.spool.path("processing", mine)
        kept = self.spool.copy_in(path, "rejected", original)
        if kept is not None:  # the dead worker was rejecting it: finish that
            reason = invalid_reason(self.spool, "processing", mine, original, self.settings["max-job-bytes"])
            self.spool.reject(mine, original, reason or "rejected by a worker that died before writing why", time.time())
            return
        try:
            doc = self.spool.read("processing", mine, self.settings["max-job-bytes"])
            job_id, token = adoption_identity(original, doc, os.lstat(path))
            done = self.spool.reservation(job_id) == token and self.spool.locate(job_id, include_processing=False)
        except (JobInvalid, ValueError, OSError):
            done = False
        if done:
            os.unlink(path)
        else:
            self.spool.unclaim_to(mine, "pending", original)

    def heartbeats(self, now):
        lease = self.settings["lease-seconds"]
        for wid in self.spool.worker_ids():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, now, lease):
                self.spool.remove_heartbeat(wid)
        for name, wid in self.spool.heartbeat_leftovers():
            if wid != self.spool.wid and holder_is_dead(self.spool, wid, now, lease):
                self.spool.drop_heartbeat_leftover(name)

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
            job = self.spool.read("tmp", name, read_limit(self.settings["max-job-bytes"]))
        except (JobInvalid, OSError):
            return False
        if job.get("token") and self.spool.reservation(job["id"]) == job["token"]:
            if not self.spool.locate(job["id"], include_processing=True):
                self.spool.roll_forward(name, job)
                self.log(f"finished the interrupted enqueue of job {job['id']}")
                return True
        return False
