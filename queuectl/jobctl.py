"""Acting on single jobs by id: `queuectl cancel`, `hold`, `release` and `retry`.

Each function takes one id and returns a Result, or raises QueuectlError with the one line that
says why it could not act (the CLI prints it and exits 1 at the end). Every move is one of
spool.py's transitions (spool_layout.md, 11-16); a job another process moves meanwhile (a worker
claims it between our look and our rename) is looked for again: the rename is the lock, and the
loser only ever learns that the file is gone.

A running job cannot be moved by a command: its worker owns it. `cancel` and `hold` write a
request, requests/ID.cancel or requests/ID.hold, which the worker answers when it ends the
attempt (cancel: at once). The order that closes the race with a worker that claims or commits
the job meanwhile: the command writes the request first, then looks where the job is. A worker
reads the request after its claim (right after the spawn, and at every wake-up while the job
runs) and when it records the attempt's end; a hold request is looked at once more right after a
retry is committed to pending/. So either the worker sees the request, or the command sees the
job out of that claim and moves it itself.
"""

import os
from collections import namedtuple

from queuectl import layout as L
from queuectl import policy
from queuectl.errors import JobInvalid, NotFound, Refused
from queuectl.layout import valid_id

Result = namedtuple("Result", "id state note")
# state: the job's state once acted on; note: what happened, for people ("" when plain)

CANCEL_TIMEOUT = 30.0  # seconds `cancel` waits for a running job's worker to end it (default)
SAFETY = 1.0  # seconds between looks at a running job while waiting, should an event be missed


def _check_may_rewrite(spool, folder, name, job_id, action="change"):
    """May this process move or rewrite the job file FOLDER/NAME? Its owner may, and root
    (owners.check_may_rewrite, the one owner rule of every rewriting command).

    Asked before each move of a waiting job. A request to a running job's worker (requests/) is
    not a rewrite by this process: whoever may write into requests/ may ask (spool_layout.md,
    Security), so it is not checked here."""
    from queuectl.owners import check_may_rewrite

    try:
        st = spool.stat(folder, name)
    except FileNotFoundError:
        return  # RACE: it moved on meanwhile; the caller looks again
    check_may_rewrite(st, action, f"job {job_id!r}")


def _who():
    import getpass

    from queuectl.procs import hostname

    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid (a container without /etc/passwd)
        user = str(os.geteuid())
    return f"{user}@{hostname()}"


def _request_data(now):
    import json

    from queuectl.timeutil import iso

    return json.dumps({"since": iso(now), "by": _who(), "pid": os.getpid()}).encode()


IN_MOTION = 2.0  # seconds a reserved job may stay out of sight (between folders) before "no job"


def _where(spool, job_id):
    """(folder, name, claim) of job ID. A job on its way from one folder to the next (a claim
    being taken, a commit past its fence in tmp/) is in none of them for a moment: while its id
    is reserved it is looked for again, for IN_MOTION seconds at most."""
    import time

    give_up = None
    while True:
        where = spool.locate(job_id) if valid_id(job_id) else None
        if where is not None:
            return where
        if not valid_id(job_id) or spool.reservation(job_id) is None:
            raise NotFound(f"no job with id {job_id!r}")
        give_up = give_up or time.monotonic() + IN_MOTION
        if time.monotonic() > give_up:
            raise NotFound(f"no job with id {job_id!r} (its id is reserved, but the job is in no folder)")
        time.sleep(0.005)


def _state(spool, folder, name, claim):
    if folder in ("pending", "processing"):
        try:
            job = spool.read(folder, name, 1 << 30)
        except (FileNotFoundError, JobInvalid):
            job = {}
        return L.state_in(folder, job, claim)
    return L.state_in(folder, {})


def _read_dead(spool, job_id):
    try:
        return spool.read("dead", L.final_name(job_id), 1 << 30)
    except (FileNotFoundError, JobInvalid):
        return {}


# -- cancel ------------------------------------------------------------------------------------


def cancel(spool, job_id, now, clock, events=None, timeout=CANCEL_TIMEOUT):
    """Cancel job ID: a waiting one goes to dead/ (transition 11); a running one is stopped by
    its worker (12), and this waits for that at most TIMEOUT seconds on the monotonic CLOCK.
    EVENTS() makes a started watch.FolderEvents on the folders given, for that wait."""
    asked = False  # we wrote requests/ID.cancel
    watch = None
    start = clock()
    try:
        while True:
            folder, name, claim = _where(spool, job_id)
            if folder == "done":
                if asked:
                    spool.drop_request(job_id, "cancel")
                    raise Refused(f"job {job_id!r} completed before it could be cancelled")
                raise Refused(f"job {job_id!r} is completed: nothing to cancel")
            if folder == "dead":
                job = _read_dead(spool, job_id)
                if asked:
                    spool.drop_request(job_id, "cancel")
                    if job.get("last_error") == L.CANCELLED:
                        return Result(job_id, "dead", "cancelled: its running attempt was stopped")
                    raise Refused(f"job {job_id!r} died of its own ({job.get('last_error')}) before it could be cancelled")
                raise Refused(f"job {job_id!r} is dead already{' (cancelled)' if job.get('last_error') == L.CANCELLED else ''}: nothing to cancel")
            if folder in ("pending", "held"):
                _check_may_rewrite(spool, folder, name, job_id, "cancel")
                result = _cancel_waiting(spool, job_id, folder, name, now)
                if result is None:
                    continue  # RACE: a worker claimed it first: it is running now
                if asked:
                    spool.drop_request(job_id, "cancel")
                return result
            # processing/: a run claim (a worker runs it), or another command moving it
            if claim.op == "run" and not asked:
                spool.request(job_id, "cancel", _request_data(now))
                asked = True
                continue  # look again: the worker may have ended the attempt meanwhile
            left = timeout - (clock() - start)
            if left <= 0:
                if claim.op == "run":
                    raise Refused(
                        f"job {job_id!r} is still running on worker {claim.holder} after {timeout:g} s; "
                        "the request stays: the job is cancelled when its worker sees it"
                    )
                raise Refused(f"job {job_id!r} is being moved by `{claim.op}` ({claim.holder}); try again")
            if watch is None and events is not None:
                watch = events(["processing", "pending", "dead", "done", "held"])
                continue  # the watch is up: look once more before sleeping on it
            if watch is not None:
                watch.wait(min(SAFETY, left))
            else:
                import time

                time.sleep(min(0.05, left))
    finally:
        if watch is not None:
            watch.stop()


def _cancel_waiting(spool, job_id, folder, name, now):
    """pending/NAME -> processing/NAME@US.cancel -> dead/ (transition 11; from held/: op
    `cancel-held`). None if a worker (or another command) moved it first."""
    claim = spool.take("cancel" if folder == "pending" else "cancel-held", name)
    if claim is None:
        return None
    from queuectl.owners import check_may_rewrite, keep_owner

    try:
        job, st = spool.read_with_stat("processing", claim.name)
        check_may_rewrite(st, "cancel", f"job {job_id!r}")  # RACE: another file may have come since the first look
    except Exception as e:
        spool.put_back(claim)
        if isinstance(e, JobInvalid):
            raise Refused(f"job {job_id!r} cannot be read: {e}") from None
        raise
    if spool.finish(claim, policy.cancel(job, now, _who()), owner=keep_owner(st)) is None:  # RACE: we were thought lost
        raise Refused(f"job {job_id!r} was put back in pending/ by recovery while this command was stopped")
    state = "held" if folder == "held" else "failed" if job.get("attempts") else "pending"
    return Result(job_id, "dead", f"cancelled ({state}, never runs again unless retried)")


# -- hold and release --------------------------------------------------------------------------


def hold(spool, job_id, now):
    """Hold job ID: a waiting one moves to held/ (transition 13); a running one goes there when
    its attempt ends, should it be retried (14)."""
    asked = False
    for _ in range(100):  # each turn follows a move by another process; 100 is a livelock
        folder, name, claim = _where(spool, job_id)
        if folder == "held":
            return Result(job_id, "held", "held" if asked else "held already")
        if folder in ("done", "dead"):
            if asked:
                spool.drop_request(job_id, "hold")
            raise Refused(f"job {job_id!r} is {L.state_in(folder, {})}: nothing to hold")
        if folder == "pending":
            _check_may_rewrite(spool, folder, name, job_id, "hold")
            if spool.hold(name):
                if asked:
                    spool.drop_request(job_id, "hold")
                return Result(job_id, "held", "held")
            continue  # RACE: a worker claimed it first
        if claim.op != "run":
            raise Refused(f"job {job_id!r} is being moved by `{claim.op}` ({claim.holder}); try again")
        if not asked:
            spool.request(job_id, "hold", _request_data(now))
            asked = True
            continue  # look again: the attempt may have ended meanwhile
        return Result(job_id, "processing", f"running on worker {claim.holder}: held when its attempt ends, unless it completes or dies")
    raise Refused(f"job {job_id!r} keeps moving; try again")


def release(spool, job_id):
    """Release job ID from hold: held/ -> pending/ (transition 15), keeping its attempts and its
    not-before time (due at once if that has passed). A running job's hold request is withdrawn."""
    for _ in range(100):
        folder, name, claim = _where(spool, job_id)
        if folder == "held":
            _check_may_rewrite(spool, folder, name, job_id, "release")
        asked = spool.requested(job_id, "hold")
        if asked:  # first: a worker must not answer it once we have released the job
            spool.drop_request(job_id, "hold")
        if folder == "held":
            if spool.unhold(name):
                return Result(job_id, _state(spool, "pending", name, None), "released")
            continue  # RACE: another release (or cancel, retry) moved it first
        if asked:
            return Result(job_id, _state(spool, folder, name, claim), "hold request withdrawn")
        raise Refused(f"job {job_id!r} is not held (it is {_state(spool, folder, name, claim)})")
    raise Refused(f"job {job_id!r} keeps moving; try again")


# -- retry now -----------------------------------------------------------------------------------


def retry(spool, job_id, now):
    """Run job ID as soon as a worker is free: a waiting (failed or scheduled) or held job is
    renamed due now, keeping its attempts (transition 16); a dead one is revived as by `dlq retry`."""
    for _ in range(100):
        folder, name, claim = _where(spool, job_id)
        if folder in ("pending", "held", "dead"):
            _check_may_rewrite(spool, folder, name, job_id, "retry")
        if folder == "dead":
            from queuectl import dlq

            revived, errors, _ = dlq.retry(spool, [job_id], False)  # notes: only --all skips
            if revived:
                return Result(job_id, "pending", "revived from dead/ with attempts 0")
            if isinstance(errors[0], NotFound) and spool.locate(job_id) and spool.final_folder(job_id) != "dead":
                continue  # RACE: another command moved it meanwhile: look again
            raise errors[0]
        if folder == "done":
            raise Refused(f"job {job_id!r} is completed: nothing to retry")
        if folder == "processing":
            what = "running" if claim.op == "run" else f"being moved by `{claim.op}` ({claim.holder})"
            raise Refused(f"job {job_id!r} is {what}: nothing to retry now")
        not_before = L.parse_pending(name)[0]
        if folder == "pending" and not_before is not None and not_before <= now:
            return Result(job_id, _state(spool, folder, name, None), "due already")
        if folder == "held":
            spool.drop_request(job_id, "hold")
        dest = spool.make_due(folder, name, now)
        if dest is not None:
            return Result(job_id, _state(spool, "pending", dest, None), "due now" + (" (released from hold)" if folder == "held" else ""))
    raise Refused(f"job {job_id!r} keeps moving; try again")
