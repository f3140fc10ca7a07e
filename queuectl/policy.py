"""What an ended attempt means for its job: completed, retry later, or dead. Pure functions."""

from queuectl.timeutil import iso

LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: a huge backoff-max must still give a writable not-before time


def backoff(attempts, base, maximum):
    """Seconds to wait before the next attempt: base ** attempts, capped at MAXIMUM."""
    try:
        delay = float(base) ** attempts
    except OverflowError:
        return float(maximum)
    return min(delay, float(maximum))


def record_attempt(job, *, started, finished, exit_code, error, worker, log, base, maximum, notes=()):
    """JOB after one more ended attempt, and its not-before time if it goes back to pending.

    exit_code 0 with no error completes the job; anything else is a failure that retries while
    attempts <= max_retries and goes dead after that. NOTES, if any, go in the history entry.
    """
    job = dict(job)
    attempts = job.get("attempts", 0) + 1
    job["attempts"] = attempts
    job["exit_code"] = exit_code
    if error is None and exit_code not in (0, None):
        error = f"exited with status {exit_code}"
    job["last_error"] = error
    job["updated_at"] = iso(finished)
    job["history"] = list(job.get("history") or []) + [
        {
            "attempt": attempts,
            "started_at": iso(started),
            "finished_at": iso(finished),
            "exit_code": exit_code,
            "error": error,
            "worker": worker,
            "log": log,
        }
    ]
    if notes:
        job["history"][-1]["notes"] = list(notes)
    if exit_code == 0 and error is None:
        job["state"] = "completed"
        return job, None
    if attempts > job.get("max_retries", 0):
        job["state"] = "dead"
        return job, None
    job["state"] = "failed"
    return job, min(finished + backoff(attempts, base, maximum), LATEST)


def revive(job, now):
    """A dead job made pending again (dlq retry): attempts 0, a fresh history section."""
    job = dict(job)
    job["previous_runs"] = list(job.get("previous_runs") or []) + [
        {"retried_at": iso(now), "attempts": job.get("attempts", 0), "history": job.get("history") or []}
    ]
    job.update(state="pending", attempts=0, history=[], exit_code=None, last_error=None, updated_at=iso(now))
    return job


def attempt_seq(job):
    """The number of the next attempt over the job's whole life (names its log file)."""
    earlier = sum(len(r.get("history") or []) for r in job.get("previous_runs") or [])
    return earlier + len(job.get("history") or []) + 1
