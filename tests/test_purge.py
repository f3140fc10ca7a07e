"""Issue 10: `queuectl purge` removes finished jobs with every attempt's log and their id
reservations, and rejected files with their reasons; never pending/ or processing/."""

import json
import os
import time

import pytest

DAY = 86400.0


def age(spool, folder, name, seconds):
    """Make FOLDER/NAME look SECONDS old (its mtime is when it entered its folder)."""
    t = time.time() - seconds
    os.utime(spool.path(folder, name), (t, t))


def setup_jobs(spool):
    """done/ok1, done/ok2 (one log each), dead/bad (3 attempts, 3 logs), rejected/junk.json
    (with its reason), pending/later (scheduled), and a claimed job in processing/."""
    spool.run("config", "set", "backoff-max", "0", check=0)
    for job_id in ("ok1", "ok2"):
        spool.enqueue({"id": job_id, "command": f"echo {job_id}"})
    spool.enqueue({"id": "bad", "command": "echo try $QUEUECTL_ATTEMPT; exit 1", "max_retries": 2})
    spool.drop_in("junk.json", "{not json")
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    spool.enqueue({"id": "later", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    spool.enqueue({"id": "held", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    [name] = [n for n in spool.ls("pending") if n.endswith("_held.json")]
    claim = name[: -len(".json")] + "@otherhost.1.2.json"  # a claim of a live-looking holder elsewhere
    os.rename(spool.path("pending", name), spool.path("processing", claim))
    assert spool.ls("logs") == ["bad.1.log", "bad.2.log", "bad.3.log", "ok1.1.log", "ok2.1.log"]
    return claim


def purge(spool, *args):
    return spool.json("purge", "--json", *args)


def test_purge_removes_finished_jobs_logs_ids_and_rejected_files_but_not_waiting_or_running_ones(spool):
    claim = setup_jobs(spool)
    before = {f: spool.ls(f) for f in ("pending", "processing", "ids")}
    dry = purge(spool, "--dry-run")
    assert (dry["jobs"], dry["files"], dry["dry_run"]) == (4, 13, True)  # 3 jobs + logs + ids; junk + reason
    assert dry["bytes"] > 0
    assert {f: spool.ls(f) for f in ("pending", "processing", "ids")} == before  # dry: nothing removed
    assert len(spool.ls("done")) == 2 and spool.ls("rejected") == ["junk.json", "junk.json.reason"]

    got = purge(spool)
    assert got == dict(dry, dry_run=False)
    for folder in ("done", "dead", "rejected", "logs", "tmp"):
        assert spool.ls(folder) == [], folder
    assert spool.ls("ids") == ["held", "later"]
    assert [n for n in spool.ls("pending")][0].endswith("_later.json")
    assert spool.ls("processing") == [claim]
    assert purge(spool) == {"jobs": 0, "files": 0, "bytes": 0, "dry_run": False}
    p = spool.run("purge", "--dry-run", check=0)
    assert p.stdout == "would purge 0 job(s): 0 file(s), 0 bytes\n"


def test_an_id_is_free_again_once_its_job_is_purged(spool):
    spool.enqueue({"id": "nightly-1", "command": "echo first"})
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    p = spool.run("enqueue", json.dumps({"id": "nightly-1", "command": "true"}), check=1)
    assert "already exists" in p.stderr
    assert purge(spool, "--state", "completed")["jobs"] == 1
    spool.enqueue({"id": "nightly-1", "command": "echo second"})
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    assert spool.show("nightly-1")["state"] == "completed"
    assert spool.run("logs", "nightly-1", check=0).stdout == "second\n"  # the log is the new job's


def test_older_than_counts_from_when_the_job_entered_its_folder(spool):
    setup_jobs(spool)
    age(spool, "done", "ok1.json", 8 * DAY)
    age(spool, "dead", "bad.json", 8 * DAY)
    age(spool, "rejected", "junk.json", 8 * DAY)  # the writer's mtime: not when it was rejected
    got = purge(spool, "--older-than", "7d", "--state", "completed", "--state", "rejected")
    assert (got["jobs"], got["files"]) == (1, 3)  # ok1: job, log, id; bad: not this state; junk: rejected just now
    assert spool.ls("done") == ["ok2.json"] and spool.ls("dead") == ["bad.json"]
    assert spool.ls("rejected") == ["junk.json", "junk.json.reason"]
    age(spool, "rejected", "junk.json.reason", 8 * DAY)
    got = purge(spool, "--older-than", "604800")
    assert (got["jobs"], got["files"]) == (2, 7)  # bad: job, 3 logs, id; junk: file, reason
    assert spool.ls("rejected") == [] and spool.ls("dead") == []
    assert spool.ls("logs") == ["ok2.1.log"]


def test_a_reservation_that_names_another_token_is_kept(spool):
    """ids/ID is removed only while it names the purged job's token: whatever holds it otherwise
    (a later job, an enqueue under way) keeps it."""
    spool.enqueue({"id": "a", "command": "true"})
    spool.enqueue({"id": "b", "command": "true"})
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    os.unlink(spool.path("ids", "a"))
    with open(spool.path("ids", "a"), "w") as f:
        f.write("another-token")
    os.unlink(spool.path("ids", "b"))  # gone already (by hand): nothing to remove, no error
    assert purge(spool)["jobs"] == 2
    assert spool.ls("ids") == ["a"] and spool.ls("done") == []


def test_an_interrupted_purge_is_finished_by_a_worker(spool):
    """A purger that died after its commit point (the job renamed into tmp/ as .purge) leaves its
    file; a worker's recovery removes the job's logs, its reservation, then the file."""
    spool.enqueue({"id": "j", "command": "echo x"})
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    dead = "qc-deadhost.999999.1.n0badcafe-00aa11bb22cc.purge"  # a purger in another namespace...
    os.rename(spool.path("done", "j.json"), spool.path("tmp", dead))
    t = time.time() - 3600  # ...whose lease ran out long ago
    os.utime(spool.path("tmp", dead), (t, t))
    spool.run("worker", "start", "--burst", check=0, timeout=120)
    assert (spool.ls("tmp"), spool.ls("logs"), spool.ls("ids")) == ([], [], [])


@pytest.mark.parametrize("bad", [["--state", "pending"], ["--state", "processing"], ["--older-than", "soon"]])
def test_purge_refuses_what_it_must_not_touch_or_cannot_read(spool, bad):
    spool.enqueue({"id": "p", "command": "true"})
    p = spool.run("purge", *bad, check=2)
    assert len(p.stderr.strip().splitlines()) == 1
    assert spool.ls("ids") == ["p"] and len(spool.ls("pending")) == 1


def test_purge_help_has_an_example(spool):
    out = spool.run("purge", "--help", check=0).stdout
    assert "Example:" in out and "queuectl purge --state completed --older-than 7d" in out
