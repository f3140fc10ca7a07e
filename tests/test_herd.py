"""Issue 11, no thundering herd: the index forgets names that left pending/, the pool's workers
hear of each other's claims (claimboard.py), and a pool loses few claim renames per job."""

import os
import re
import subprocess

from queuectl import claimboard
from queuectl.claimboard import CLAIMED, RETURNED, ClaimBoard
from queuectl.dueindex import DueIndex

from conftest import QUEUECTL


def test_the_index_forgets_a_name_that_left_pending_at_once():
    ix = DueIndex()
    for i, name in enumerate(["a", "b", "c"]):
        ix.add(name, 0, 100.0, f"2026-01-0{i + 1}", doc={"id": name})
    ix.discard("a")  # another worker claimed it
    ix.discard("zzz")  # never known: nothing happens
    assert "a" not in ix and len(ix) == 2
    assert ix.take_doc("a") is None
    assert [k[3] for k in ix.top_due(200.0, 5)] == ["b", "c"]
    assert ix.pop_due(200.0) == "b"
    ix.discard("c")
    assert ix.pop_due(200.0) is None and not ix.has_due(200.0) and ix.next_due() is None
    ix.add("a", 0, 100.0, "2026-01-01")  # put back under the same name: known again
    assert ix.pop_due(200.0) == "a"


def test_top_due_is_best_first_and_leaves_the_names_in_the_index():
    ix = DueIndex()
    ix.add("low", 0, 10.0, "x")
    ix.add("high", 5, 50.0, "x")
    ix.add("later", 9, 500.0, "x")  # not due at 100
    ix.add("old", 0, 5.0, "x")
    assert [k[3] for k in ix.top_due(100.0, 3)] == ["high", "old", "low"]
    assert [k[3] for k in ix.top_due(100.0, 2)] == ["high", "old"]
    assert len(ix) == 4 and ix.pop_due(100.0) == "high"


def test_the_board_tells_each_worker_the_others_claims_not_its_own():
    board = ClaimBoard(3)
    w0, w1, w2 = (board.reader(i) for i in range(3))
    w0.publish("a.json")
    w1.publish("b.json")
    w0.publish("a.json", RETURNED)
    assert w2.news() == [(CLAIMED, "a.json"), (RETURNED, "a.json"), (CLAIMED, "b.json")]
    assert w2.news() == []
    assert w0.news() == [(CLAIMED, "b.json")]
    assert w1.news() == [(CLAIMED, "a.json"), (RETURNED, "a.json")]
    w0.publish("x" * (claimboard.NAME_BYTES + 1))  # too long to publish: costs a failed rename at most
    assert w1.news() == []


def test_a_reader_a_whole_ring_behind_loses_those_names_and_reads_on():
    board = ClaimBoard(2)
    w0, w1 = board.reader(0), board.reader(1)
    for i in range(claimboard.RING - 1):
        w0.publish(f"j{i}")
    assert w1.news() == [(CLAIMED, f"j{i}") for i in range(claimboard.RING - 1)]
    for i in range(claimboard.RING + 10):
        w0.publish(f"k{i}")
    # lapped: what the ring still holds (but the slot written next) is read, the rest is lost
    assert w1.news() == [(CLAIMED, f"k{i}") for i in range(11, claimboard.RING + 10)]
    w0.publish("next")
    assert w1.news() == [(CLAIMED, "next")]


def _lost_claims(stderr):
    """Each worker's count of claim renames it lost, from its last line (one per worker)."""
    return [int(m.group(1)) for m in re.finditer(r": stopped: .*; (\d+) claim\(s\) lost to other workers", stderr)]


def test_a_pool_of_16_loses_at_most_one_and_a_half_claims_per_job(spool, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    n = 400
    lines = "".join(f'{{"id": "h{i:03d}", "command": "mkdir {marks}/$QUEUECTL_JOB_ID"}}\n' for i in range(n))
    spool.run("enqueue", "-", input=lines)
    p = spool.run("worker", "start", "--burst", "--count", "16", timeout=300)
    assert sorted(os.listdir(marks)) == [f"h{i:03d}" for i in range(n)]  # each ran exactly once (mkdir is O_EXCL)
    assert len(os.listdir(spool.path("done"))) == n
    assert os.listdir(spool.path("pending")) == [] and os.listdir(spool.path("dead")) == []
    lost = _lost_claims(p.stderr)
    assert len(lost) == 16, p.stderr  # every worker said how many it lost
    assert sum(lost) / n <= 1.5, f"{sum(lost)} failed claims for {n} jobs: {lost}"
    print(f"{sum(lost)} failed claims for {n} jobs")


def _pool_worker(slot, count, index):
    from queuectl.worker import Worker

    w = Worker.__new__(Worker)  # pick() needs only the board and the index
    w.board = ClaimBoard(count).reader(slot) if count > 1 else None
    w.index = index
    return w


def test_a_pool_spreads_its_workers_within_the_best_priority_only():
    ix = DueIndex()
    for i in range(5):
        ix.add(f"p0-{i}", 0, 10.0 + i, "x")
    ix.add("p5-a", 5, 20.0, "x")
    ix.add("p5-b", 5, 30.0, "x")
    assert _pool_worker(0, 1, ix).pick(100.0) == "p5-a"  # alone: the best
    # worker k of 4 takes the (k mod 2)-th of the two due jobs of priority 5, never one of priority 0
    assert [_pool_worker(k, 4, ix).pick(100.0) for k in range(4)] == ["p5-a", "p5-b", "p5-a", "p5-b"]
    ix.discard("p5-a")
    ix.discard("p5-b")
    assert [_pool_worker(k, 3, ix).pick(100.0) for k in range(3)] == ["p0-0", "p0-1", "p0-2"]
    later = DueIndex()
    later.add("soon", 0, 10.0, "x")
    assert _pool_worker(2, 3, later).pick(5.0) is None  # nothing due yet


def test_two_pools_and_a_lone_worker_run_each_job_exactly_once(spool, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    n = 300
    # every third job fails its first attempt: its retry comes back to pending/ under a new name
    lines = "".join(
        f'{{"id": "t{i:03d}", "command": "mkdir {marks}/$QUEUECTL_JOB_ID.$QUEUECTL_ATTEMPT && [ $QUEUECTL_ATTEMPT -gt {1 if i % 3 == 0 else 0} ]", "max_retries": 1}}\n'
        for i in range(n)
    )
    spool.run("config", "set", "backoff-max", "0", check=0)
    spool.run("enqueue", "-", input=lines, check=0)
    procs = [
        subprocess.Popen([QUEUECTL, "worker", "start", "--burst", "--count", c], env=spool.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c in ("8", "8", "1")
    ]
    spool.procs.extend(procs)  # stopped at teardown if a wait below fails
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    want = sorted(f"t{i:03d}.{a}" for i in range(n) for a in ((1, 2) if i % 3 == 0 else (1,)))
    assert sorted(os.listdir(marks)) == want  # each attempt ran once (mkdir is O_EXCL)
    assert len(os.listdir(spool.path("done"))) == n
    assert os.listdir(spool.path("pending")) == [] and os.listdir(spool.path("dead")) == []
