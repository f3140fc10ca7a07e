"""`dlq retry`: dead/ -> processing/ (the claim is the lock) -> pending/ with attempts 0."""

from queuectl import policy
from queuectl import spool as sp
from queuectl.errors import JobInvalid, NotFound
from queuectl.job import valid_id
from queuectl.timeutil import now as clock


def retry(spool, ids, all_):
    """Revive the dead jobs IDS (or all). Returns (revived ids, errors for the others)."""
    if all_:
        ids = list(ids) + sorted(n[:-5] for n in spool.listdir("dead") if sp.FINAL_RE.match(n))
    revived, errors = [], []
    for job_id in dict.fromkeys(ids):
        cname = spool.claim_final("dead", job_id) if valid_id(job_id) else None
        if cname is None:
            where = spool.locate(job_id) if valid_id(job_id) else None
            state = {"pending": "pending", "processing": "processing", "done": "completed"}.get(where[0]) if where else None
            errors.append(NotFound(f"job {job_id!r} is not dead (it is {state})" if state else f"no job with id {job_id!r}"))
            continue
        try:
            job = spool.read("processing", cname, 1 << 30)
        except JobInvalid as e:
            spool.unclaim_to(cname, "dead", sp.final_name(job_id))
            errors.append(NotFound(f"job {job_id!r} cannot be read: {e}"))
            continue
        now = clock()
        spool.settle(cname, policy.revive(job, now), now)
        revived.append(job_id)
    return revived, errors
