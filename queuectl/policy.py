"""What an ended attempt means for its job: completed, retry later, or dead. Pure functions.

A job's record of its attempts is bounded (job.HISTORY_KEEP, job.RUNS_KEEP, job.ERROR_MAX), so
that however many attempts and `dlq retry` rounds it has, its file stays within job.read_limit().
"""

from queuectl.job import ERROR_MAX, HISTORY_KEEP, RUNS_KEEP
from queuectl.layout import CANCELLED
from queuectl.timeutil import iso

LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: a huge backoff-max must still give a writable not-before time


def backoff(attempts, base, maximum):
    """Seconds to wait before the next attempt: base ** attempts, capped at MAXIMUM."""
    try:
        delay = float(base) ** attempts
    except OverflowError:
        return float(maximum)
    return min(delay, float(maximum))


def clip_error(error):
    """An error as stored: at most ERROR_MAX characters (a cwd in a message can be any length)."""
    if error is None or len(error) <= ERROR_MAX:
        return error
    return error[: ERROR_MAX - 3] + "..."


def trim_history(entries):
    """The first entry and the latest ones, HISTORY_KEEP in all: the first failure and the recent
    ones are what explain a job; each entry's `attempt` shows where some were left out."""
    if len(entries) <= HISTORY_KEEP:
        return entries
    return entries[:1] + entries[len(entries) - (HISTORY_KEEP - 1) :]


def trim_runs(runs):
    """The first previous run, the latest ones, and between them one entry merging the rest: its
    `attempts` is their sum and `runs` their number, so attempt numbers (log names) stay unique."""
    if len(runs) <= RUNS_KEEP:
        return runs
    middle = runs[1 : len(runs) - (RUNS_KEEP - 2)]
    merged = {
        "retried_at": middle[-1].get("retried_at"),
        "attempts": sum(r.get("attempts") or 0 for r in middle),
        "runs": sum(r.get("runs") or 1 for r in middle),
        "history": [],
    }
    return runs[:1] + [merged] + runs[len(runs) - (RUNS_KEEP - 2) :]


def record_attempt(job, *, started, finished, exit_code, error, worker, log, base, maximum, notes=(), cancelled=False):
    """JOB after one more ended attempt, and its not-before time if it goes back to pending.

    exit_code 0 with no error completes the job; anything else is a failure that retries while
    attempts <= max_retries and goes dead after that. NOTES, if any, go in the history entry.
    CANCELLED (`queuectl cancel` asked): an attempt that did not complete ends the job in dead/,
    its error "cancelled", never retried.
    """
    if cancelled and not (exit_code == 0 and error is None):
        error = CANCELLED
    job = dict(job)
    attempts = job.get("attempts", 0) + 1
    job["attempts"] = attempts
    job["exit_code"] = exit_code
    if error is None and exit_code not in (0, None):
        error = f"exited with status {exit_code}"
    error = clip_error(error)
    job["last_error"] = error
    job["updated_at"] = iso(finished)
    job["history"] = trim_history(
        list(job.get("history") or [])
        + [
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
    )
    if notes:
        job["history"][-1]["notes"] = list(notes)
    if exit_code == 0 and error is None:
        job["state"] = "completed"
        return job, None
    if attempts > job.get("max_retries", 0) or error == CANCELLED and cancelled:
        job["state"] = "dead"
        return job, None
    job["state"] = "failed"
    return job, retry_time(finished, attempts, base, maximum)


def retry_time(finished, attempts, base, maximum):
    """When a job whose ATTEMPTS-th attempt failed at FINISHED may run again."""
    return min(finished + backoff(attempts, base, maximum), LATEST)


def next_run(job, now, base, maximum):
    """The not-before time of a job found staged in tmp/ with no name to carry it (a commit whose
    writer died between its fence and its publish): a retry's from its last attempt, else now
    (or run_at)."""
    from queuectl.timeutil import parse_iso

    history = job.get("history") or []
    if job.get("state") == "failed" and history:
        return retry_time(parse_iso(history[-1]["finished_at"]), job.get("attempts", 0), base, maximum)
    return parse_iso(job["run_at"]) if job.get("run_at") else now


def revive(job, now):
    """A dead job made pending again (dlq retry): attempts 0, a fresh history section."""
    job = dict(job)
    job["previous_runs"] = trim_runs(
        list(job.get("previous_runs") or [])
        + [{"retried_at": iso(now), "attempts": job.get("attempts", 0), "history": trim_history(job.get("history") or [])}]
    )
    job.update(state="pending", attempts=0, history=[], exit_code=None, last_error=None, updated_at=iso(now))
    return job


def attempt_seq(job):
    """The number of the next attempt over the job's whole life (names its log file).

    Counted from `attempts`, not from the history entries, which are trimmed.
    """
    earlier = sum(r.get("attempts") or 0 for r in job.get("previous_runs") or [])
    return earlier + (job.get("attempts") or 0) + 1


def numbered_attempts(job):
    """[(n, history entry)] of the attempts the job still records, oldest first, where n numbers
    the attempt over the job's whole life as attempt_seq does (its log is `ID.n.log`): an entry's
    `attempt` counts within its round, the rounds before it add their `attempts`."""
    out, earlier = [], 0
    for run in job.get("previous_runs") or []:
        out.extend((earlier + (h.get("attempt") or 0), h) for h in run.get("history") or [])
        earlier += run.get("attempts") or 0
    out.extend((earlier + (h.get("attempt") or 0), h) for h in job.get("history") or [])
    return out


def outcome_status(entry):
    """An ended attempt's history ENTRY as an exit status: 0 if it succeeded, else its exit code
    when that is 1-255, else 1 (killed by a timeout, lost worker, could not start...)."""
    code = entry.get("exit_code")
    if code == 0 and entry.get("error") is None:
        return 0
    return code if isinstance(code, int) and 1 <= code <= 255 else 1


def cancel(job, now, who):
    """A waiting job (pending or failed) cancelled by `queuectl cancel` before it ran again: dead,
    `last_error` "cancelled". Its attempts and history stay as they were: no attempt ended."""
    job = dict(job)
    job.update(state="dead", last_error=CANCELLED, updated_at=iso(now), cancelled_by=who)
    return job


def was_cancelled(job):
    """Did the job's latest attempt end because `queuectl cancel` stopped it?"""
    history = job.get("history") or []
    return job.get("state") == "dead" and bool(history) and history[-1].get("error") == CANCELLED
