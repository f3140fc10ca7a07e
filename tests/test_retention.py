"""Issue 10: retention, applied by workers a step at a time, keeps a spool used by cron for months
bounded; the ids of removed jobs are free again; the attempt counters survive it."""

import os
import time

from conftest import wait_until
from queuectl import counters, layout, policy, retention
from queuectl import job as jobdoc
from queuectl.settings import effective
from queuectl.spool import Spool

HOUR, DAY = 3600.0, 86400.0
T0 = 1_800_000_000.0  # the simulation's clock: any fixed time will do
FOLDERS = ("pending", "processing", "done", "dead", "rejected", "logs", "ids", "tmp")


def usage(root):
    """{folder: (files, bytes of disk blocks)}"""
    out = {}
    for folder in FOLDERS:
        names = os.listdir(os.path.join(root, folder))
        out[folder] = (len(names), sum(os.lstat(os.path.join(root, folder, n)).st_blocks * 512 for n in names))
    return out


def run_job(spool, job_id, t, fail):
    """Enqueue job ID at T (simulated), run one attempt that prints a line, settle it in done/
    (or dead/ when FAIL) through the real spool steps, dated T as a worker would have."""
    (ok,) = spool.enqueue([jobdoc.accept({"id": job_id, "command": "date", "max_retries": 0}, t, 0)])
    assert ok == job_id
    (name,) = [n for n in os.listdir(os.path.join(spool.root, "pending")) if layout.parse_pending(n)[1] == job_id]
    claim = spool.take("run", name)
    fd = spool.open_log(job_id, 1)
    os.write(fd, b"Tue Dec  1 03:00:00 UTC 2026\n")
    os.close(fd)
    job, nb = policy.record_attempt(
        spool.read_claim(claim), started=t, finished=t, exit_code=1 if fail else 0, error=None, worker=spool.wid,
        log=layout.log_name(job_id, 1), base=2, maximum=0,
    )
    folder, final = spool.finish(claim, job, nb)
    os.utime(os.path.join(spool.root, folder, final), (t, t))  # it entered its folder at T
    return job["state"]


def reject_junk(spool, name, t):
    """A drop-in that is not JSON, rejected at T."""
    with open(os.path.join(spool.root, "pending", name), "w") as f:
        f.write("{not json")
    claim = spool.take("adopt", name)
    kept = spool.reject(claim, "not valid JSON", t)
    os.utime(os.path.join(spool.root, "rejected", kept + layout.REASON_SUFFIX), (t, t))


def test_a_hundred_days_of_cron_use_stay_bounded_under_the_default_retention(tmp_path):
    """A job every 2 simulated hours (every 12th one dead), a rejected drop-in a day, for 100 days;
    a worker's retention steps called with the simulated clock. Every folder stops growing once
    its retention is reached (completed 7d, rejected 30d, dead 90d), and holds exactly the jobs
    younger than their retention. A purge of completed jobs on day 50 leaves the counters as they were."""
    spool = Spool(str(tmp_path / "spool")).ensure()
    settings = effective({})
    assert (settings["completed-retention"], settings["dead-retention"], settings["rejected-retention"]) == (7 * DAY, 90 * DAY, 30 * DAY)
    lines = []
    sweeper = retention.Sweeper(spool, settings, lines.append)
    finished = []  # (t, state)
    rejected_at = []
    expected = dict.fromkeys(counters.NAMES, 0)
    daily = {}
    purged_at = None
    for step in range(100 * 12):
        t = T0 + step * 2 * HOUR
        n = len(finished)
        state = run_job(spool, f"backup-{step}", t, fail=(step % 12 == 11))
        finished.append((t, state))
        expected[state] += 1
        if step % 12 == 0:
            reject_junk(spool, f"junk-{step}.json", t)
            rejected_at.append(t)
        sweeper.step(t, step * 2 * HOUR)  # the worker's monotonic clock: a pass is due each time
        while sweeper.busy():
            sweeper.step(t, step * 2 * HOUR)
        if step % 12 == 11:  # the day's worker exits: its counts go into counters.json
            counters.fold(spool, f"host.{1000 + step}.1.n0badcafe", dict(counters.zero(), completed=11, dead=1))
            daily[step // 12 + 1] = usage(spool.root)
            # exactly the jobs younger than their retention are left
            def kept(ft, keep, purged=False):
                return t - ft < keep and not (purged and purged_at is not None and purged_at - ft >= 3 * DAY)

            assert len(os.listdir(os.path.join(spool.root, "done"))) == sum(1 for ft, fs in finished[: n + 1] if fs == "completed" and kept(ft, 7 * DAY, True))
            assert len(os.listdir(os.path.join(spool.root, "dead"))) == sum(1 for ft, fs in finished[: n + 1] if fs == "dead" and kept(ft, 90 * DAY))
            assert len(os.listdir(os.path.join(spool.root, "rejected"))) == 2 * sum(1 for rt in rejected_at if kept(rt, 30 * DAY))
        if step == 50 * 12:  # an operator's purge in the middle: counters untouched
            before = counters.totals(spool)
            freed = retention.purge(spool, ["completed"], 3 * DAY, t)
            purged_at = t
            assert freed.jobs > 0
            assert counters.totals(spool) == before
    assert counters.totals(spool) == expected == dict(expected, completed=1100, dead=100)
    # bounded: the last days hold what day 91 held (each folder at its steady size)
    for day in range(92, 101):
        for folder in FOLDERS:
            assert daily[day][folder][0] <= daily[91][folder][0] + 1, (day, folder, daily[day][folder], daily[91][folder])
            assert daily[day][folder][1] <= daily[91][folder][1] + 8192, (day, folder)
    files = {f: daily[100][f][0] for f in FOLDERS}
    assert files == {"pending": 0, "processing": 0, "done": 77, "dead": 90, "rejected": 60, "logs": 167, "ids": 167, "tmp": 0}
    # the first days grew: without retention day 100 would hold 1200 jobs, 1200 logs, 1200 ids
    assert daily[7]["done"][0] == 77 and daily[100]["done"][0] == 77
    assert any("retention: removed" in line for line in lines)


def test_workers_remove_old_jobs_and_keep_what_retention_keeps(spool):
    """A worker applies retention in the background: the completed job older than 7 days goes,
    with its log and id (which a new job can then take); the young one stays; a dead job stays
    forever under dead-retention 0; an old rejected file goes with its reason."""
    spool.run("config", "set", "dead-retention", "0", check=0)
    spool.run("config", "set", "completed-retention", "7d", check=0)
    assert spool.run("config", "get", "completed-retention", check=0).stdout == "604800\n"
    for job_id in ("old", "young"):
        spool.enqueue({"id": job_id, "command": f"echo {job_id}"})
    spool.enqueue({"id": "bad", "command": "exit 1", "max_retries": 0})
    spool.drop_in("junk.json", "{not json")
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    t = time.time() - 400 * DAY
    for folder, name in (("done", "old.json"), ("dead", "bad.json"), ("rejected", "junk.json"), ("rejected", "junk.json.reason")):
        os.utime(spool.path(folder, name), (t, t))
    spool.start_workers()
    wait_until(lambda: spool.ls("done") == ["young.json"] and spool.ls("rejected") == [], timeout=20)
    assert spool.ls("logs") == ["young.1.log"] and spool.ls("ids") == ["bad", "young"]
    assert spool.ls("dead") == ["bad.json"]
    spool.enqueue({"id": "old", "command": "echo again"})  # its id is free again
    wait_until(lambda: spool.ls("done") == ["old.json", "young.json"], timeout=20)
    assert spool.run("logs", "old", check=0).stdout == "again\n"


def test_retention_settings_take_durations():
    from queuectl.errors import BadInput
    from queuectl.settings import parse_value

    assert parse_value("completed-retention", "2h") == 7200
    assert parse_value("rejected-retention", "90") == 90
    assert parse_value("dead-retention", "0") == 0
    for bad in ("soon", "-1d", "1_0", "400000d"):
        try:
            parse_value("dead-retention", bad)
        except BadInput as e:
            assert "dead-retention must be a duration" in str(e)
        else:
            raise AssertionError(bad)


def test_a_retention_step_does_a_bounded_amount_of_work(tmp_path):
    """A step looks at STEP entries at most and removes what is old among them (in batches); the
    scan resumes where it stopped at the next step, so a large backlog is cleared over several
    turns of the worker's loop, never in one."""
    spool = Spool(str(tmp_path / "spool")).ensure()
    old = time.time() - 8 * DAY
    for i in range(200):
        path = os.path.join(spool.root, "done", f"j{i}.json")
        with open(path, "w") as f:
            f.write("{}")  # not a job any more: removed all the same (it was in done/)
        os.utime(path, (old, old))
    sweeper = retention.Sweeper(spool, effective({}), lambda line: None)
    now, steps = time.time(), 0
    while True:
        before = len(os.listdir(os.path.join(spool.root, "done")))
        sweeper.step(now, 0.0)
        steps += 1
        assert before - len(os.listdir(os.path.join(spool.root, "done"))) <= retention.STEP
        if not sweeper.busy():
            break
    assert os.listdir(os.path.join(spool.root, "done")) == [] and os.listdir(os.path.join(spool.root, "tmp")) == []
    assert steps == -(-200 // retention.STEP)  # the last one also scans dead/ and rejected/ (empty)
    sweeper.step(now, 1.0)
    assert not sweeper.busy()  # the next pass waits PASS_EVERY seconds
