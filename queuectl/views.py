"""Read-only views of the spool for status, list, show, logs and dlq list."""

import os

from queuectl import spool as sp
from queuectl.errors import JobInvalid
from queuectl.procs import split_worker_id
from queuectl.timeutil import iso

STATE_FOLDERS = {"pending": "pending", "failed": "pending", "processing": "processing", "completed": "done", "dead": "dead"}
LIST_STATES = ("pending", "processing", "completed", "failed", "dead", "rejected")


def _read(spool, folder, name):
    try:
        return spool.read(folder, name, 1 << 30)
    except (FileNotFoundError, JobInvalid):
        return None  # it moved on (or is being rewritten): skip it in a snapshot


def printable(name):
    """A file name as text: bytes that are not UTF-8 shown as \\xNN, so JSON output stays valid."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def with_state(job, folder, name):
    """The job as shown to users: its state from the folder it is in, and where it waits."""
    job = dict(job)
    job.pop("token", None)
    if folder == "pending":
        job["state"] = "failed" if job.get("attempts") else "pending"
        nb = sp.parse_pending(name)[0]
        if nb is not None:
            job["next_run_at"] = iso(nb)
    elif folder == "processing":
        job["state"] = "processing"
        parsed = sp.parse_claim(name)
        if parsed:
            job["worker"] = parsed[2]
    elif folder == "done":
        job["state"] = "completed"
    elif folder == "dead":
        job["state"] = "dead"
    return job


def jobs(spool, folder):
    """[(job as shown)] of every readable job file in FOLDER."""
    out = []
    for name in spool.listdir(folder):
        if folder == "processing" and (sp.parse_claim(name) or ("",))[0] != "job":
            continue
        if folder in ("done", "dead") and not sp.FINAL_RE.match(name):
            continue
        job = _read(spool, folder, name)
        if job is not None:
            out.append(with_state(job, folder, name))
    return out


def counts(spool):
    pending = failed = 0
    for name in spool.listdir("pending"):
        job = _read(spool, "pending", name)
        if job is not None and job.get("attempts"):
            failed += 1
        else:
            pending += 1
    return {
        "pending": pending,
        "processing": sum(1 for _, kind, _, _ in spool.claims() if kind == "job"),
        "completed": sum(1 for n in spool.listdir("done") if sp.FINAL_RE.match(n)),
        "failed": failed,
        "dead": sum(1 for n in spool.listdir("dead") if sp.FINAL_RE.match(n)),
        "rejected": len(spool.rejected()),
    }


def workers(spool):
    held = {}
    for name, kind, key, holder in spool.claims():
        if kind == "job":
            held[holder] = key
    out = []
    for wid in sorted(spool.worker_ids()):
        try:
            host, pid, _ = split_worker_id(wid)
        except ValueError:
            continue
        out.append({"id": wid, "pid": pid, "host": host, "job": held.get(wid)})
    return out


def status(spool):
    return {"counts": counts(spool), "workers": workers(spool)}


def listing(spool, state=None, limit=None):
    """Jobs in STATE (all states when None), oldest first."""
    if state == "rejected":
        out = [{"name": printable(n), "state": "rejected", "reason": r} for n, r in spool.rejected()]
        return out[:limit] if limit is not None else out
    folders = [STATE_FOLDERS[state]] if state else ["pending", "processing", "done", "dead"]
    out = []
    for folder in folders:
        out.extend(j for j in jobs(spool, folder) if state is None or j["state"] == state)
    out.sort(key=lambda j: (j.get("created_at") or "", j.get("id") or ""))
    return out[:limit] if limit is not None else out


def show(spool, job_id):
    folder, name, job = spool.load(job_id)
    return with_state(job, folder, name)


def latest_log(spool, job_id):
    """(path of the latest attempt's log, or None when the job never ran)."""
    folder, name, job = spool.load(job_id)
    if folder == "processing":
        from queuectl.policy import attempt_seq

        return spool.log_path(sp.log_name(job["id"], attempt_seq(job)))
    entries = list(job.get("history") or [])
    if not entries:
        for run in reversed(job.get("previous_runs") or []):
            if run.get("history"):
                entries = run["history"]
                break
    # the latest attempt only: an attempt that printed nothing has no log (log: null)
    if not entries or not entries[-1].get("log"):
        return None
    return spool.log_path(entries[-1]["log"])


def read_log(path):
    if path is None or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()
