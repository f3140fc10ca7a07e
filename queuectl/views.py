"""Read-only views of the spool for status, list, show, logs, wait and dlq list.

Every decision that depends on time takes `now` (epoch seconds) from the caller.
"""

import fnmatch
import os

from queuectl import layout as L
from queuectl.errors import BadInput, JobInvalid, NotFound
from queuectl.layout import valid_id
from queuectl.procs import split_worker_id
from queuectl.timeutil import iso, parse_iso


def _read(spool, folder, name):
    try:
        return spool.read(folder, name, 1 << 30)
    except (FileNotFoundError, JobInvalid):
        return None  # RACE: it moved on (or is being rewritten): skip it in a snapshot
    except PermissionError:
        return None  # another user's job in a system spool: counted, never shown


def printable(name):
    """A file name as text: bytes that are not UTF-8 shown as \\xNN, so JSON output stays valid."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def with_state(job, folder, name, claim=None):
    """The job as shown to users: its state from the folder it is in, and where it waits."""
    job = dict(job)
    job.pop("token", None)
    job["state"] = L.state_in(folder, job, claim)
    if folder == "pending":  # held/: no next run until it is released
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


def counts(spool):
    out = dict.fromkeys(L.STATE_NAMES, 0)
    for name in spool.listdir("pending"):
        out[L.state_in("pending", _read(spool, "pending", name) or {})] += 1
    for claim in spool.claims():
        if claim.job_id is not None:
            out[L.state_in("processing", {}, claim)] += 1
    for folder in L.FINAL_FOLDERS:
        out[L.state_in(folder, {})] += sum(1 for n in spool.listdir(folder) if L.parse_final(n))
    out["held"] += sum(1 for n in spool.listdir("held") if L.parse_pending(n)[1])
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
    """Counts, live workers, the pause ({"since", "by"}) or None, and the pending jobs that no
    registered worker trusts the owner of ([{"user", "uid", "pending"}])."""
    return {"counts": counts(spool), "workers": workers(spool), "paused": spool.pause_info(), "untrusted": untrusted_pending(spool)}


def trusted_by_workers(spool):
    """The uids whose jobs some registered worker runs (the `trusts` of their heartbeats; a
    heartbeat without it: its owner), or None when no worker is registered or one runs anyone's."""
    wids = spool.worker_ids()
    if not wids:
        return None
    uids = set()
    for wid in wids:
        trusts = (spool.read_heartbeat(wid) or {}).get("trusts")
        if trusts == "all":  # a system spool's worker: it runs everyone's jobs (as their owners)
            return None
        if isinstance(trusts, list):
            uids.update(u for u in trusts if isinstance(u, int))
        else:
            owner = spool.heartbeat_owner(wid)
            if owner is not None:
                uids.add(owner)
    return uids


def _owner(spool, folder, name):
    try:
        return spool.stat(folder, name).st_uid
    except OSError:
        return None  # RACE: claimed meanwhile


def untrusted_pending(spool):
    """[{"user", "uid", "pending": N}]: jobs waiting in pending/ for a worker that trusts their
    owner, while the workers that run trust none of them (a worker leaves such files alone)."""
    trusted = trusted_by_workers(spool)
    if trusted is None:
        return []
    by_uid = {}
    for name in spool.listdir("pending"):
        uid = _owner(spool, "pending", name)
        if uid is not None and uid not in trusted:
            by_uid[uid] = by_uid.get(uid, 0) + 1
    from queuectl.owners import user_name

    return [{"user": user_name(uid), "uid": uid, "pending": n} for uid, n in sorted(by_uid.items())]


def _latest_entry(job):
    from queuectl.policy import numbered_attempts

    entries = numbered_attempts(job)
    return entries[-1][1] if entries else {}


def with_times(spool, job, claim=None):
    """JOB (as shown) with `started_at` and `finished_at` of its latest attempt (the running one
    for a claimed job: started when it was claimed) and `next_run_at` (null when not waiting)."""
    job = dict(job)
    if claim is not None and claim.op == "run":
        at = spool.claimed_at(claim)
        job["started_at"], job["finished_at"] = (iso(at) if at is not None else None), None
    else:
        latest = _latest_entry(job)
        job["started_at"], job["finished_at"] = latest.get("started_at"), latest.get("finished_at")
    job.setdefault("next_run_at", None)
    return job


def _rejected_at(reason):
    """When a file was rejected: the time its reason starts with, or None."""
    try:
        return parse_iso(reason.split(" ", 1)[0]) if reason else None
    except BadInput:
        return None


def listing(spool, state=None, limit=None, id_glob=None, since=None, now=None):
    """Jobs in STATE (all states when None), oldest first, with the times of with_times.

    ID_GLOB: only ids that match it (fnmatch; rejected files: their name). SINCE (seconds, with
    NOW): only jobs created within that time (rejected files: rejected within it)."""
    if since is not None and now is None:
        raise ValueError("since needs now")
    cutoff = now - since if since is not None else None
    if state == "rejected":
        out = []
        for n, r in spool.rejected():
            name = printable(n)
            if id_glob is not None and not fnmatch.fnmatchcase(name, id_glob):
                continue
            if cutoff is not None and not ((_rejected_at(r) or float("-inf")) >= cutoff):
                continue
            out.append({"name": name, "state": "rejected", "reason": r})
        return out[:limit] if limit is not None else out
    folders = [L.folder_of(state)] if state else L.JOB_FOLDERS
    trusted = trusted_by_workers(spool) if "pending" in folders else None
    out = []
    for folder in folders:
        for name, claim in _job_files(spool, folder):
            if id_glob is not None and folder == "pending" and not _may_match(name, id_glob):
                continue
            job = _read(spool, folder, name)
            if job is None:
                continue
            job = with_state(job, folder, name, claim)
            if state is not None and job["state"] != state:
                continue
            if id_glob is not None and not fnmatch.fnmatchcase(job["id"], id_glob):
                continue
            if cutoff is not None and not _created_within(job, cutoff):
                continue
            if folder == "pending" and trusted is not None:
                uid = _owner(spool, folder, name)
                if uid is not None and uid not in trusted:
                    from queuectl.owners import user_name

                    job["waiting_for"] = f"a worker that trusts user {user_name(uid)}: no running worker does"
            out.append(with_times(spool, job, claim))
    out.sort(key=lambda j: (j.get("created_at") or "", j.get("id") or ""))
    return out[:limit] if limit is not None else out


def _may_match(name, id_glob):
    """Could pending/NAME hold a job whose id matches? (a drop-in's free-form name: maybe)"""
    job_id = L.parse_pending(name)[1]
    return job_id is None or fnmatch.fnmatchcase(job_id, id_glob)


def _created_within(job, cutoff):
    try:
        return parse_iso(job.get("created_at") or "", "created_at") >= cutoff
    except BadInput:
        return False


def relative(stamp, now):
    """An ISO-8601 time as seen from NOW: 'in 4 s', '3 min ago', 'now'; '-' for None."""
    if not stamp:
        return "-"
    try:
        delta = parse_iso(stamp) - now
    except BadInput:
        return "?"
    ago = delta < 0
    secs = abs(delta)
    if secs < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if secs >= size or unit == "s":
            n = int(secs // size)
            return f"{n} {unit} ago" if ago else f"in {n} {unit}"


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


# -- logs of every attempt, logs -f, wait -------------------------------------------------------


def attempts_of(spool, job_id):
    """(job, claim, [(n, history entry or None, running)]) for every attempt job ID has had or is
    running, n numbering them over the job's whole life (logs/ID.n.log). An attempt whose entry
    was trimmed from the history (job.HISTORY_KEEP) has entry None."""
    from queuectl.policy import attempt_seq, numbered_attempts

    folder, name, claim, job = spool.load(job_id)
    recorded = dict(numbered_attempts(job))
    running = claim is not None and claim.op == "run"
    last = attempt_seq(job) if running else attempt_seq(job) - 1
    return job, claim, [(n, recorded.get(n), running and n == last) for n in range(1, last + 1)]


def attempt_log(spool, job_id, n):
    """The bytes of attempt N's log (None: it printed nothing). Raises NotFound for an attempt
    the job has not had."""
    job, _, attempts = attempts_of(spool, job_id)
    if not 1 <= n <= len(attempts):
        had = f"it has had {len(attempts)}" if attempts else "it has not run yet"
        raise NotFound(f"job {job_id!r} has no attempt {n} ({had})")
    return spool.read_log(L.log_name(job["id"], n))


def attempt_header(n, entry, running, started=None):
    """'== attempt N (exit X, started T) ==' for logs --all."""
    if running:
        return f"== attempt {n} (running, started {started or '?'}) =="
    if entry is None:
        return f"== attempt {n} (exit ?, started ?) =="
    code = entry.get("exit_code")
    return f"== attempt {n} (exit {'-' if code is None else code}, started {entry.get('started_at') or '?'}) =="


def all_logs(spool, job_id):
    """[(header line, log bytes or None)] for every attempt of job ID, oldest first."""
    job, claim, attempts = attempts_of(spool, job_id)
    out = []
    for n, entry, running in attempts:
        started = None
        if running:
            at = spool.claimed_at(claim)
            started = iso(at) if at is not None else None
        out.append((attempt_header(n, entry, running, started), spool.read_log(L.log_name(job["id"], n))))
    return out


LOGS_FOLDERS = ("logs", "pending", "done", "dead")  # logs -f: output grows in logs/; an attempt
# ends when its job is published into pending/ (a retry), done/ or dead/
WAIT_FOLDERS = ("done", "dead")


def follow(spool, job_id, write, events, clock, note, safety=1.0, vanish_grace=5.0):
    """`logs -f`: write the output of job ID's running attempt as it grows (the attempt it runs
    next, when it has never run) and return the exit status of its outcome (policy.outcome_status).
    A job that is not running and has run: its latest attempt's log and outcome.

    EVENTS (watch.FolderEvents on LOGS_FOLDERS, started before this call, so that nothing is
    missed) say when to look again; every SAFETY seconds it looks anyway. CLOCK is monotonic.
    NOTE(text) reports on stderr."""
    from queuectl.policy import attempt_seq, numbered_attempts, outcome_status

    folder, name, claim, job = spool.load(job_id)
    job_id = job["id"]
    entries = numbered_attempts(job)
    if not (claim is not None and claim.op == "run") and entries:
        n, entry = entries[-1]
        data = spool.read_log(entry["log"]) if entry.get("log") else None
        if data:
            write(data)
        return outcome_status(entry)
    seq = attempt_seq(job)
    log = L.log_name(job_id, seq)
    offset = 0
    missing_since = None
    look = True
    while True:
        data = spool.read_log(log, offset)
        if data:
            write(data)
            offset += len(data)
        if look:
            try:
                job = spool.load(job_id)[3]
                missing_since = None
            except NotFound:  # RACE: between its claim and its new place (the fence): look again
                missing_since = missing_since if missing_since is not None else clock()
                if clock() - missing_since > vanish_grace:
                    raise
                job = None
            if job is not None:
                entry = dict(numbered_attempts(job)).get(seq)
                if entry is not None:
                    data = spool.read_log(log, offset)
                    if data:
                        write(data)
                    return outcome_status(entry)
                if attempt_seq(job) > seq:  # ended, but its entry was trimmed already
                    note(f"job {job_id}: attempt {seq} ended; its outcome is no longer in the history")
                    return 1
        changed = events.wait(safety)
        look = not changed or bool(changed - {spool.folder_path("logs")})


def wait_jobs(spool, ids, events, clock, note, timeout=None, safety=2.0, vanish_grace=5.0):
    """`wait`: block until every job of IDS is completed or dead. Returns 0 if all completed, 1
    if any is dead or unknown (NOTE says which, one line each), 124 when TIMEOUT seconds (on the
    monotonic CLOCK) passed first.

    EVENTS (watch.FolderEvents on WAIT_FOLDERS, started before this call) say when to look
    again: a look costs two lookups per job still waited for. Every SAFETY seconds each job is
    also located, and one found nowhere for VANISH_GRACE seconds (or with no id reservation at
    all) is unknown."""
    start = clock()
    remaining = list(dict.fromkeys(ids))
    status = 0
    missing = {}  # id -> since when it was found nowhere
    last_full = None
    while True:
        full = last_full is None or clock() - last_full >= safety
        if full:
            last_full = clock()
        for job_id in list(remaining):
            folder = spool.final_folder(job_id)
            if folder is None and full:
                if not valid_id(job_id) or (spool.locate(job_id) is None and spool.final_folder(job_id) is None):
                    since = missing.setdefault(job_id, clock())
                    if not valid_id(job_id) or spool.reservation(job_id) is None or clock() - since >= vanish_grace:
                        note(f"no job with id {job_id!r}")
                        status = 1
                        remaining.remove(job_id)
                    continue
                missing.pop(job_id, None)
            if folder == "dead":
                note(f"job {job_id} is dead")
                status = 1
            if folder is not None:
                remaining.remove(job_id)
        if not remaining:
            return status
        left = None if timeout is None else timeout - (clock() - start)
        if left is not None and left <= 0:
            note(f"timed out after {timeout:g} s; still waiting for: {', '.join(remaining)}")
            return 124
        events.wait(safety if left is None else min(safety, left))
