"""Totals of ended attempts since the spool was made, for `queuectl metrics`.

Where they live (spool_layout.md, "Counters"): each live worker carries its own counts in its
heartbeat (`counts`, rewritten with it: no extra write); when a worker ends, its counts are folded
into SPOOL/counters.json under SPOOL/counters.json.lock, by the worker itself as it exits, or by
the recovery that finds it dead, and its heartbeat is removed under the same lock. A total is
therefore counters.json plus the counts of the heartbeats not folded yet. counters.json names the
latest workers it folded, so a heartbeat folded by a process that died before removing it is not
counted twice. Purges and retention never touch any of it.

A one-shot command that ends an attempt or a job (none does today: `cancel` of a waiting job ends no attempt) calls add().
"""

NAMES = ("completed", "failed", "dead", "cancelled")  # what an attempt left its job as
FOLDED_KEEP = 64  # worker ids remembered as folded: a fold and its heartbeat's removal are moments apart
LOCK_TIMEOUT = 10.0


def zero():
    """Counts at zero: NAMES, and any other outcome layout.py names (a worker counts by state)."""
    from queuectl.layout import OUTCOMES

    return dict.fromkeys(NAMES + tuple(o for o in OUTCOMES if o not in NAMES), 0)


def clean(data):
    """The counts in DATA (a heartbeat's `counts`, counters.json): whole numbers >= 0 only."""
    data = data if isinstance(data, dict) else {}
    return {k: v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0 for k, v in ((k, data.get(k, 0)) for k in NAMES)}


def _lock(spool):
    return spool.counters_lock(LOCK_TIMEOUT)


def _merge(totals, counts):
    return {k: totals[k] + counts[k] for k in NAMES}


def add(spool, outcome, n=1):
    """Count N attempts (or jobs) that ended as OUTCOME (one of NAMES), durably, now: for a
    command that is not a worker (a worker counts in its heartbeat and folds at exit)."""
    if outcome not in NAMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    with _lock(spool):
        doc = spool.read_counters()
        doc["totals"] = _merge(clean(doc.get("totals")), dict(zero(), **{outcome: n}))
        spool.write_counters(doc)


def fold(spool, wid, counts=None):
    """Fold the counts of worker WID (ended: gracefully, with COUNTS, or dead, from its
    heartbeat) into counters.json, and remove its heartbeat, under the lock. Raises TimeoutError
    if the lock cannot be had: the heartbeat then stays, for recovery to fold later."""
    with _lock(spool):
        if counts is None:
            counts = clean((spool.read_heartbeat(wid) or {}).get("counts"))
        doc = spool.read_counters()
        folded = [w for w in doc.get("folded") or [] if isinstance(w, str)]
        if wid not in folded and any(counts.values()):
            doc["totals"] = _merge(clean(doc.get("totals")), clean(counts))
            doc["folded"] = (folded + [wid])[-FOLDED_KEEP:]
            spool.write_counters(doc)
        spool.remove_heartbeat(wid)


def totals(spool):
    """{name: total} since the spool was made: counters.json plus live (unfolded) heartbeats.
    Read under the lock, so that a fold in between cannot make a total go down or count twice;
    a reader who may not create the lock file (a read-only spool, a monitoring user with read
    access only) reads without it."""
    try:
        with _lock(spool):
            return _read_totals(spool)
    except PermissionError:
        return _read_totals(spool)


def _read_totals(spool):
    doc = spool.read_counters()
    out = clean(doc.get("totals"))
    folded = set(w for w in doc.get("folded") or [] if isinstance(w, str))
    for wid in spool.worker_ids():
        if wid not in folded:
            out = _merge(out, clean((spool.read_heartbeat(wid) or {}).get("counts")))
    return out
