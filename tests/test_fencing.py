"""Issue 8: a result is published once, by the claim's holder only (spool_layout.md, "The fence").

- A fault part-way through a batch of results leaves each job in exactly one place, and settling
  again never publishes a result twice.
- A holder whose claim was taken over (it was thought lost) publishes nothing of that job.
"""

import errno
import os
import time

from conftest import wait_until
from fdpaths import at
from queuectl import job as jobdoc
from queuectl import layout
from queuectl.results import Unsettled
from queuectl.runner import Attempt
from queuectl.settings import Watched, set_value
from queuectl.spool import PUBLISHED, TAKEN_OVER, Commit, Spool
from test_faults import Faults


def new_spool(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    set_value(spool.config_path, "backoff-max", "0")
    return spool


def enqueue_and_take(spool, *docs):
    spool.enqueue([jobdoc.accept(d, time.time(), 3) for d in docs])
    claims = []
    for name in sorted(spool.listdir("pending")):
        claims.append((spool.take("run", name), spool.read("processing", layout.claim_name("run", name, spool.wid))))
    return claims


def ended(exit_code):
    a = Attempt(time.time())
    a.finished, a.exit_code = time.time(), exit_code
    return a


def test_a_fault_in_the_middle_of_a_batch_never_publishes_a_result_twice(tmp_path, monkeypatch):
    spool = new_spool(tmp_path)
    (c1, j1), (c2, j2) = enqueue_and_take(spool, {"id": "a-retry", "command": "false"}, {"id": "b-ok", "command": "true"})
    queue = Unsettled(spool, Watched(spool.config_path))
    queue.add(c1, j1, ended(1), None)  # a retry: to pending/
    queue.add(c2, j2, ended(0), None)  # a success: to done/

    real, renames = os.rename, []

    def rename(src, dst, *a, **kw):
        dst_path = at(dst, kw.get("dst_dir_fd"))
        if "/done/" in dst_path and len([r for r in renames if "/done/" in r]) < 3:
            renames.append(dst_path)
            raise OSError(errno.EACCES, "injected", dst)
        renames.append(dst_path)
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", rename)
    outcomes = []
    for _ in range(4):  # the worker settles again on every wake-up while the fault lasts
        done, error = queue.settle()
        outcomes.append(([(c.job["id"], c.outcome) for c in done], type(error).__name__ if error else None))
        # between tries another worker claims the retry as soon as it is in pending/
        for name in spool.listdir("pending"):
            os.rename(os.path.join(spool.root, "pending", name), os.path.join(spool.root, "processing", layout.claim_name("run", name, "other.1.2")))
    monkeypatch.setattr(os, "rename", real)

    assert outcomes == [
        ([("a-retry", PUBLISHED)], "PermissionError"),
        ([], "PermissionError"),
        ([], "PermissionError"),
        ([("b-ok", PUBLISHED)], None),
    ]
    published_retries = [r for r in renames if "/pending/" in r]
    assert len(published_retries) == 1, renames  # the retry was published once, not once per try
    assert spool.listdir("done") == ["b-ok.json"] and len(queue) == 0
    assert [c.job_id for c in spool.claims()] == ["a-retry"]  # held by the other worker; nowhere else
    assert [n for n in spool.listdir("tmp")] == []


def test_a_holder_whose_claim_was_taken_over_publishes_nothing(tmp_path):
    spool = new_spool(tmp_path)
    ((claim, job),) = enqueue_and_take(spool, {"id": "j1", "command": "true"})
    # recovery, believing this holder lost, takes the claim over (the same rename Recovery does)
    other = layout.claim_name("run", claim.origin, "elsewhere.1.2")
    os.rename(os.path.join(spool.root, "processing", claim.name), os.path.join(spool.root, "processing", other))

    c = Commit(claim, dict(job, state="completed", attempts=1))
    spool.commit([c])

    assert c.outcome == TAKEN_OVER
    assert spool.listdir("done") == [] and spool.listdir("pending") == [] and spool.listdir("tmp") == []
    assert spool.listdir("processing") == [other]  # the new holder's claim, untouched


def test_a_release_after_a_takeover_moves_nothing(tmp_path):
    spool = new_spool(tmp_path)
    ((claim, job),) = enqueue_and_take(spool, {"id": "j1", "command": "true"})
    other = layout.claim_name("run", claim.origin, "elsewhere.1.2")
    os.rename(os.path.join(spool.root, "processing", claim.name), os.path.join(spool.root, "processing", other))
    try:
        spool.put_back(claim)
    except FileNotFoundError:
        pass
    assert spool.listdir("pending") == [] and spool.listdir("processing") == [other]


def test_a_batch_fault_with_real_workers_runs_each_attempt_once(spool, tmp_path):
    """End to end: while renames into done/ fail, a job that fails and retries is not run again
    for each try of the worker's batch (it ran over 4,000 times in seconds before the fence)."""
    runs = tmp_path / "runs"
    faults = Faults(tmp_path, spool.env)
    spool.run("config", "set", "backoff-max", "0", check=0)
    faults.set("EACCES rename /done/")
    spool.enqueue({"id": "a-flaky", "command": f"echo run >> {runs}; exit 1", "max_retries": 2})
    spool.enqueue({"id": "b-ok", "command": "true"})
    spool.start_workers(count=1)  # takes both jobs: one batch holds the retry and the success
    wait_until(lambda: len(faults.hits()) >= 2, timeout=20, message="the fault was never hit")
    spool.start_workers(count=1)  # a second worker runs whatever retry gets published
    # the fault lasts until the flaky job has used every attempt (its retries run on the second worker)
    wait_until(lambda: len(faults.hits()) >= 5 and spool.ls("dead"), timeout=30, message="the flaky job never went dead")
    faults.clear()
    spool.wait_counts(completed=1, dead=1, timeout=30)
    assert runs.read_text().count("run") == 3  # 1 + max_retries, exactly
    job = spool.show("a-flaky")
    assert [h["attempt"] for h in job["history"]] == [1, 2, 3]
    assert spool.ls("processing") == [] and spool.ls("pending") == []
