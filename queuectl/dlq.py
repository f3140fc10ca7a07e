"""`dlq retry`: dead/ -> processing/ID@WORKER.revive (the claim is the lock) -> pending/, attempts 0."""

from queuectl import layout as L
from queuectl import policy
from queuectl.errors import JobInvalid, NotFound, NotYours
from queuectl.layout import valid_id
from queuectl.timeutil import now as clock


def retry(spool, ids, all_):
    """Revive the dead jobs IDS (or all). Returns (revived ids, errors for the others)."""
    if all_:
        listed = sorted(filter(None, map(L.parse_final, spool.listdir("dead"))))
        ids = list(ids) + [i for i in listed if _mine(spool, i)]  # a system spool's user: their own
    revived, errors = [], []
    for job_id in dict.fromkeys(ids):
        try:
            if valid_id(job_id) and spool.final_folder(job_id) == "dead":
                spool.check_mine(job_id, "dead", L.final_name(job_id))
        except NotYours as e:
            errors.append(e)
            continue
        except FileNotFoundError:
            pass  # RACE: revived by someone else meanwhile: the take below says so
        claim = spool.take("revive", L.final_name(job_id)) if valid_id(job_id) else None
        if claim is None:
            where = spool.locate(job_id) if valid_id(job_id) else None
            state = L.state_in(where[0], {"attempts": 0}) if where else None
            errors.append(NotFound(f"job {job_id!r} is not dead (it is {state})" if state else f"no job with id {job_id!r}"))
            continue
        try:
            job, owner = spool.read_obeyed(claim, 1 << 30)
        except JobInvalid as e:
            spool.put_back(claim)
            errors.append(NotFound(f"job {job_id!r} cannot be read: {e}"))
            continue
        now = clock()
        if spool.finish(claim, policy.revive(job, now), now, owner) is None:  # RACE: we were thought lost
            errors.append(NotFound(f"job {job_id!r} was put back in dead/ by recovery while this command was stopped"))
            continue
        revived.append(job_id)
    return revived, errors


def _mine(spool, job_id):
    try:
        spool.check_mine(job_id, "dead", L.final_name(job_id))
    except (NotYours, OSError):
        return False
    return True
