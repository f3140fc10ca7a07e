"""`queuectl metrics`: the spool in Prometheus' text exposition format (version 0.0.4).

Gauges are read from the spool as it is now (the counts of `status`, the pending names, the
heartbeats); the attempt counters come from counters.py and survive worker restarts and purges.
Every decision that depends on time takes `now`.
"""

from queuectl import layout as L

PREFIX = "queuectl_"


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(out, name, kind, help_text, samples):
    out.append(f"# HELP {PREFIX}{name} {help_text}")
    out.append(f"# TYPE {PREFIX}{name} {kind}")
    for labels, value in samples:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        value = str(value) if isinstance(value, int) else repr(float(value))  # never 1.2e+06 for a count
        out.append(f"{PREFIX}{name}{{{text}}} {value}" if text else f"{PREFIX}{name} {value}")


def oldest_due_age(spool, now):
    """Seconds the oldest due job in pending/ has been due at NOW (0 when none is): its name's
    not-before time; a drop-in not adopted yet is due since its mtime."""
    oldest = None
    for name in spool.listdir("pending"):
        nb = L.parse_pending(name)[0]
        if nb is None:
            st = spool.entry_stat("pending", name)
            if st is None:
                continue  # RACE: adopted or claimed meanwhile
            nb = st.st_mtime
        if nb <= now and (oldest is None or nb < oldest):
            oldest = nb
    return 0.0 if oldest is None else now - oldest


def workers_alive(spool, settings, now):
    """Heartbeats of workers that are alive (the holder test of recovery: pid, else the lease)."""
    from queuectl.recovery import holder_is_dead

    fs_now = spool.fs_now(now)
    lease = settings["lease-seconds"]
    return sum(1 for wid in spool.worker_ids() if not holder_is_dead(spool, wid, fs_now, lease))


def render(spool, settings, now):
    """The exposition text."""
    from queuectl import counters, views

    counts = views.counts(spool)
    totals = counters.totals(spool)
    out = []
    _family(out, "jobs", "gauge", "Jobs in each state now.", [({"state": s}, counts[s]) for s in L.STATE_NAMES])
    _family(out, "oldest_due_job_age_seconds", "gauge", "How long the oldest due job in pending/ has waited past its not-before time (0: none due).",
            [({}, round(oldest_due_age(spool, now), 3))])
    _family(out, "workers_alive", "gauge", "Workers with a live heartbeat.", [({}, workers_alive(spool, settings, now))])
    _family(out, "paused", "gauge", "1 while the spool is paused (queuectl pause).", [({}, 1 if spool.paused() else 0)])
    _family(out, "attempts_total", "counter", "Attempts ended since the spool was made, by what they left their job as (failed: to be retried).",
            [({"outcome": k}, totals[k]) for k in counters.NAMES])
    return "\n".join(out) + "\n"
