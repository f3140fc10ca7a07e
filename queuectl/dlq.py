"""`dlq retry`: dead/ -> processing/ID@WORKER.revive (the claim is the lock) -> pending/, attempts 0.

Only a job's owner (or root) retries it: the rewrite would make another user's job this user's,
and root's rewrite keeps the job its owner's (owners.py)."""

from queuectl import layout as L
from queuectl import policy
from queuectl.errors import JobInvalid, NotFound
from queuectl.layout import valid_id
from queuectl.owners import NotYours, check_may_rewrite, keep_owner, may_act_on, user_name, who_may
from queuectl.timeutil import now as clock


def retry(spool, ids, all_):
    """Revive the dead jobs IDS (or all). Returns (revived ids, errors for the others, notes).

    With ALL, other users' dead jobs are skipped (a note says how many and whose); named by id,
    such a job is an error naming its owner."""
    skipped = {}  # uid -> number of dead jobs of that user that --all left alone
    if all_:
        for job_id in sorted(filter(None, map(L.parse_final, spool.listdir("dead")))):
            try:
                uid = spool.stat("dead", L.final_name(job_id)).st_uid
            except FileNotFoundError:
                continue  # RACE: retried by someone else meanwhile
            if may_act_on(uid):
                ids = list(ids) + [job_id]
            elif job_id not in ids:
                skipped[uid] = skipped.get(uid, 0) + 1
    revived, errors = [], []
    for job_id in dict.fromkeys(ids):
        try:  # before taking it: in a system spool's sticky dead/, another's file cannot be moved
            if valid_id(job_id) and spool.final_folder(job_id) == "dead":
                check_may_rewrite(spool.stat("dead", L.final_name(job_id)), "retry", f"job {job_id!r}")
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
            job, who = spool.read_obeyed(claim, 1 << 30)  # who: its owner, in a system spool
            st = spool.stat("processing", claim.name)
            check_may_rewrite(st, "retry", f"job {job_id!r}")
        except (JobInvalid, NotYours) as e:
            spool.put_back(claim)  # unchanged, its owner's still
            errors.append(e if isinstance(e, NotYours) else NotFound(f"job {job_id!r} cannot be read: {e}"))
            continue
        now = clock()
        owner = who if who is not None else keep_owner(st)
        if spool.finish(claim, policy.revive(job, now), now, owner=owner) is None:  # RACE: we were thought lost
            errors.append(NotFound(f"job {job_id!r} was put back in dead/ by recovery while this command was stopped"))
            continue
        revived.append(job_id)
    notes = [
        f"skipped {n} dead job(s) of user {user_name(uid)}: only {who_may(uid)} can retry them"
        for uid, n in sorted(skipped.items())
    ]
    return revived, errors, notes
