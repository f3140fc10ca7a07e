"""Issue 10: `queuectl metrics` in Prometheus' text format, read back with the reference parser;
its attempt counters survive worker restarts, a killed worker and purges."""

import json
import os
import signal
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families

from conftest import QUEUECTL, wait_until


def metrics(spool, text=None):
    """{(sample name, frozen labels): value}, and the families' types, as the parser reads them."""
    text = spool.run("metrics", check=0).stdout if text is None else text
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def jobs(samples):
    return {dict(k[1])["state"]: v for k, v in samples.items() if k[0] == "queuectl_jobs"}


def attempts(samples):
    return {dict(k[1])["outcome"]: v for k, v in samples.items() if k[0] == "queuectl_attempts_total"}


def gauge(samples, name):
    return samples[(f"queuectl_{name}", ())]


def test_a_fresh_spool_has_every_metric_at_zero(spool):
    samples, types = metrics(spool)
    assert jobs(samples) == dict.fromkeys(("pending", "processing", "completed", "failed", "dead", "held", "rejected"), 0)
    assert attempts(samples) == dict.fromkeys(("completed", "failed", "dead", "cancelled"), 0)
    assert (gauge(samples, "oldest_due_job_age_seconds"), gauge(samples, "workers_alive"), gauge(samples, "paused")) == (0, 0, 0)
    assert types == {"queuectl_jobs": "gauge", "queuectl_oldest_due_job_age_seconds": "gauge", "queuectl_workers_alive": "gauge",
                     "queuectl_paused": "gauge", "queuectl_attempts": "counter"}


def test_counts_follow_the_jobs_and_totals_survive_restarts_and_purges(spool):
    spool.run("config", "set", "backoff-max", "0", check=0)
    spool.enqueue({"id": "ok1", "command": "true"})
    spool.enqueue({"id": "ok2", "command": "true"})
    spool.enqueue({"id": "bad", "command": "exit 1", "max_retries": 1})
    spool.drop_in("junk.json", "{not json")
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    samples, _ = metrics(spool)
    assert jobs(samples) == {"pending": 0, "processing": 0, "completed": 2, "failed": 0, "dead": 1, "held": 0, "rejected": 1}
    assert attempts(samples) == {"completed": 2, "failed": 1, "dead": 1, "cancelled": 0}

    assert spool.json("purge", "--json")["jobs"] == 4
    samples, _ = metrics(spool)
    assert set(jobs(samples).values()) == {0}
    assert attempts(samples) == {"completed": 2, "failed": 1, "dead": 1, "cancelled": 0}  # purges keep them

    spool.enqueue({"id": "ok3", "command": "true"})
    spool.run("worker", "start", "--burst", check=0, timeout=120)  # another worker, another run
    assert attempts(metrics(spool)[0]) == {"completed": 3, "failed": 1, "dead": 1, "cancelled": 0}


def folded(spool):
    """The worker ids counters.json says were folded ([] before the first fold writes it)."""
    try:
        with open(spool.path("counters.json")) as f:
            return json.load(f).get("folded", [])
    except FileNotFoundError:
        return []


def test_a_killed_workers_counts_are_kept(spool):
    """A worker carries its counts in its heartbeat; killed (-9), it cannot fold them: the worker
    whose recovery finds it gone does, once. Meanwhile they count as the live worker's."""
    spool.run("config", "set", "heartbeat-seconds", "0.2", check=0)
    spool.run("config", "set", "lease-seconds", "1", check=0)
    pool = spool.start_workers(count=1)
    for i in range(3):
        spool.enqueue({"id": f"j{i}", "command": "true"})
    wait_until(lambda: attempts(metrics(spool)[0])["completed"] == 3, timeout=20)
    samples, _ = metrics(spool)
    assert gauge(samples, "workers_alive") == 1
    [first] = spool.live_workers()
    os.kill(first["pid"], signal.SIGKILL)  # the supervisor starts a replacement, whose recovery folds
    wait_until(lambda: [w["id"] for w in spool.live_workers()] not in ([], [first["id"]]), timeout=20)
    wait_until(lambda: first["id"] in folded(spool), timeout=20)
    assert attempts(metrics(spool)[0])["completed"] == 3
    spool.enqueue({"id": "j3", "command": "true"})
    wait_until(lambda: attempts(metrics(spool)[0])["completed"] == 4, timeout=20)
    pool.send_signal(signal.SIGTERM)
    pool.communicate(timeout=30)
    samples, _ = metrics(spool)
    assert attempts(samples) == {"completed": 4, "failed": 0, "dead": 0, "cancelled": 0}
    assert gauge(samples, "workers_alive") == 0 and spool.ls("workers") == []


def test_a_cancellation_counted_by_a_command_shows(spool):
    """`cancel` (another branch) is not a worker: it counts with counters.add."""
    from queuectl import counters
    from queuectl.spool import Spool

    counters.add(Spool(spool.root), "cancelled")
    counters.add(Spool(spool.root), "cancelled", 2)
    assert attempts(metrics(spool)[0])["cancelled"] == 3


def test_the_oldest_due_job_age_and_the_pause(spool):
    spool.run("pause", check=0)
    spool.enqueue({"id": "late", "command": "true", "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))})
    spool.enqueue({"id": "future", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    samples, _ = metrics(spool)
    assert 3600 <= gauge(samples, "oldest_due_job_age_seconds") < 3600 + 60
    assert gauge(samples, "paused") == 1 and jobs(samples)["pending"] == 2


def test_textfile_is_written_atomically_and_a_bad_path_fails_cleanly(spool, tmp_path):
    out = tmp_path / "collector"
    out.mkdir()
    spool.run("metrics", "--textfile", str(out / "queuectl.prom"), check=0)
    assert os.listdir(out) == ["queuectl.prom"]  # the temporary file was renamed, nothing else left
    samples, _ = metrics(spool, (out / "queuectl.prom").read_text())
    assert attempts(samples)["completed"] == 0
    p = spool.run("metrics", "--textfile", str(tmp_path / "missing" / "q.prom"), check=1)
    assert p.stderr.startswith("queuectl: cannot write ") and len(p.stderr.splitlines()) == 1


def test_metrics_help_has_an_example(spool):
    out = subprocess.run([QUEUECTL, "metrics", "--help"], capture_output=True, text=True, env=spool.env).stdout
    assert "Example:" in out and "queuectl metrics --textfile" in out
