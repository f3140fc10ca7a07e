"""Read-only views of the spool for status, list, show, logs and dlq list."""

import os

from queuectl import layout as L
from queuectl.errors import JobInvalid
from queuectl.procs import split_worker_id
from queuectl.timeutil import iso


def _read(spool, folder, name):
    try:
        return spool.read(folder, name, 1 << 30)
    except (FileNotFoundError, JobInvalid):
        return None  # RACE: it moved on (or is being rewritten): skip it in a snapshot


def printable(name):
    """A file name as text: bytes that are not UTF-8 shown as \\xNN, so JSON output stays valid."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def with_state(job, folder, name, claim=None):
    """The job as shown to users: its state from the folder it is in, and where it waits."""
    job = dict(job)
    job.pop("token", None)
    job["state"] = L.state_in(folder, job, claim)
    if folder == "pending":
        nb = L.parse_pending(name)[0]
        if nb is not None:
            job["next_run_at"] = iso(nb)
    elif claim is not None and claim.op == "run":
        job["worker"] = claim.holder
    return job


def _job_files(spool, folder):
    """[(name, Claim or None)] of the job files in FOLDER (claims of drop-ins are not jobs yet)."""
    if folder == "processing":
        return [(c.name, c) for c in spool.claims() if c.job_id is not None]
    if folder in L.FINAL_FOLDERS:
        return [(n, None) for n in spool.listdir(folder) if L.parse_final(n)]
    return [(n, None) for n in spool.listdir(folder)]


def jobs(spool, folder):
    """[(job as shown)] of every readable job file in FOLDER."""
    out = []
    for name, claim in _job_files(spool, folder):
        job = _read(spool, folder, name)
        if job is not None:
            out.append(with_state(job, folder, name, claim))
    return out


def counts(spool):
    out = dict.fromkeys(L.STATE_NAMES, 0)
    for name in spool.listdir("pending"):
        out[L.state_in("pending", _read(spool, "pending", name) or {})] += 1
    for claim in spool.claims():
        if claim.job_id is not None:
            out[L.state_in("processing", {}, claim)] += 1
    for folder in L.FINAL_FOLDERS:
        out[L.state_in(folder, {})] += sum(1 for n in spool.listdir(folder) if L.parse_final(n))
    out["rejected"] = len(spool.rejected())
    return out


def workers(spool):
    held = {c.holder: c.job_id for c in spool.claims() if c.op == "run"}
    out = []
    for wid in sorted(spool.worker_ids()):
        try:
            w = split_worker_id(wid)
        except ValueError:
            continue
        out.append({"id": wid, "pid": w.pid, "host": w.host, "job": held.get(wid)})
    return out


def status(spool):
    """Counts, live workers, and the pause ({"since", "by"}) or None."""
    return {"counts": counts(spool), "workers": workers(spool), "paused": spool.pause_info()}


def listing(spool, state=None, limit=None):
    """Jobs in STATE (all states when None), oldest first."""
    if state == "rejected":
        out = [{"name": printable(n), "state": "rejected", "reason": r} for n, r in spool.rejected()]
        return out[:limit] if limit is not None else out
    folders = [L.folder_of(state)] if state else L.JOB_FOLDERS
    out = []
    for folder in folders:
        out.extend(j for j in jobs(spool, folder) if state is None or j["state"] == state)
    out.sort(key=lambda j: (j.get("created_at") or "", j.get("id") or ""))
    return out[:limit] if limit is not None else out


def show(spool, job_id):
    folder, name, claim, job = spool.load(job_id)
    return with_state(job, folder, name, claim)


def latest_log(spool, job_id):
    """The bytes of the latest attempt's log, or None (the job never ran, or printed nothing)."""
    folder, name, claim, job = spool.load(job_id)
    if claim is not None and claim.op == "run":
        from queuectl.policy import attempt_seq

        return spool.read_log(L.log_name(job["id"], attempt_seq(job)))
    entries = list(job.get("history") or [])
    if not entries:
        for run in reversed(job.get("previous_runs") or []):
            if run.get("history"):
                entries = run["history"]
                break
    # the latest attempt only: an attempt that printed nothing has no log (log: null)
    if not entries or not entries[-1].get("log"):
        return None
    return spool.read_log(entries[-1]["log"])
