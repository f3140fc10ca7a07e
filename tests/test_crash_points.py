"""Issue 3, section 1: a crash right before and right after every commit point of the transition
table in spool_layout.md, then recovery by another process, then a burst worker.

A crash is a forked child that runs the real step (Spool.enqueue, a real Worker loop, dlq.retry,
Recovery.run) with one os function trapped: at the matching call it calls os._exit before doing it
("before") or right after doing it ("after"). Once reaped, the child's worker id (host.pid.start)
names a dead process -- exactly what recovery is for. The parent then runs recovery as any other
process would and checks the invariants: the job is in exactly one state folder, its file is
complete valid JSON with the attempts and state the contract gives, tmp/, processing/ and workers/
hold nothing recovery left behind; finally a real `queuectl worker start --burst` completes the job
or leaves it dead as the contract says.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import traceback
from collections import namedtuple
from datetime import datetime, timezone

import pytest

from conftest import Spool as CliSpool, wait_until
from fdpaths import named
from queuectl import dlq, jobctl, layout, policy, procs, retention
from queuectl import job as jobdoc
from queuectl.recovery import Recovery
from queuectl.settings import Watched, set_value
from queuectl.spool import Spool
from queuectl.worker import Worker
from spoolnames import OPS, PENDING_RE, WORKER, parse_claim, reserved_token  # the spool as spool_layout.md describes it

CRASHED = 86  # exit status of a child that died at its injected crash point (0: it never got there)


LISTED = ("tmp", "pending", "held", "processing", "done", "dead", "rejected", "workers", "ids", "requests")
LOST = "worker lost: "


# -- the crash ----------------------------------------------------------------------------------


def _folder(path):
    return os.path.basename(os.path.dirname(os.fsdecode(path)))


def moves(src, dst):
    """A trap predicate: a rename/link of a file in SRC/ to a name in DST/."""
    return lambda *args: len(args) >= 2 and _folder(args[0]) == src and _folder(args[1]) == dst


def _arm(fn_name, pred, when, nth=1):
    """Replace os.FN_NAME so that its NTH call matching PRED ends the process before/after it."""
    real = getattr(os, fn_name)
    seen = [0]

    def trap(*args, **kwargs):
        if pred(*named(args, kwargs)):
            seen[0] += 1
            if seen[0] == nth:
                if when == "before":
                    os._exit(CRASHED)
                real(*args, **kwargs)
                os._exit(CRASHED)
        return real(*args, **kwargs)

    setattr(os, fn_name, trap)


def run_child(step, trap=None, timeout=30):
    """Run STEP() in a forked child, with TRAP = (os function, predicate, when[, nth]) armed.

    Returns the child's exit status once it has been reaped (so its pid names a dead process).
    """
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            if trap:
                _arm(*trap)
            step()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def reaped():
        got, status = os.waitpid(pid, os.WNOHANG)
        return (status,) if got else None

    try:
        (status,) = wait_until(reaped, timeout=timeout, message=f"the crash child {pid} did not end")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status)


# -- the spool and what is in it -----------------------------------------------------------------


class Ctx:
    def __init__(self, tmp_path, backoff_max="0"):
        self.root = str(tmp_path / "spool")
        self.flag = str(tmp_path / "flag")  # a `test -e FLAG` job fails until the test creates it
        self.lockdir = str(tmp_path / "once")
        self.original = None  # the bytes of a drop-in, for the cases where it must survive unchanged
        spool = Spool(self.root).ensure()
        # a retry is due at once (or soon: see wait_due), so that a burst run finishes it
        set_value(spool.config_path, "backoff-max", backoff_max)

    def spool(self):
        return Spool(self.root)


def enqueue(ctx, doc):
    (job_id,) = ctx.spool().enqueue([jobdoc.accept(doc, time.time(), 3)])
    return job_id


def pending_name(ctx, job_id, folder="pending"):
    (name,) = [n for n in os.listdir(os.path.join(ctx.root, folder)) if PENDING_RE.match(n) and PENDING_RE.match(n).group("id") == job_id]
    return name


def drop_in(ctx, name, data):
    """The writer recipe of spool_layout.md: tmp/, fsync, rename into pending/."""
    tmp = os.path.join(ctx.root, "tmp", f"writer.{os.getpid()}.{time.monotonic_ns()}.json")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(ctx.root, "pending", name))
    ctx.original = data


TMP_RE = re.compile(r"qc-" + WORKER + r"-[0-9a-f]+\.(enqueue|write|fence|purge)\Z")  # queuectl's own tmp/ files
HEARTBEAT_RE = re.compile(WORKER + r"\.json\Z")


def _shown(folder, name, any_worker):
    if folder in ("pending", "held"):
        m = PENDING_RE.match(name)
        return f"TIME_{m.group('id')}.json" if m else name
    if folder == "processing":
        claim = parse_claim(name)
        if claim:
            op, key, worker = claim
            return f"{key}@{'W' if any_worker else worker}.{OPS[op][0]}"
    if any_worker and folder == "tmp" and TMP_RE.match(name):
        return TMP_RE.sub(r"qc-W.\1", name)
    if any_worker and folder == "workers" and HEARTBEAT_RE.match(name):
        return "W.json"
    return name


def listing(root, any_worker=False):
    """{folder: sorted names} of the non-empty folders, in a form that does not depend on time:
    a pending name shows as TIME_ID.json, a claim as ID@WORKER.json (ORIGINAL@WORKER.adopt).

    ANY_WORKER: a worker id in a name (claims, tmp/ files, heartbeats) shows as W.
    """
    out = {}
    for folder in LISTED:
        names = [_shown(folder, name, any_worker) for name in os.listdir(os.path.join(root, folder))]
        if names:
            out[folder] = sorted(names)
    return out


def recover(root):
    """Recovery as another process (this test process, alive) runs it; returns its log lines."""
    spool, lines = Spool(root), []
    Recovery(spool, Watched(spool.config_path), lines.append).run(time.time())
    return lines


def wait_due(ctx):
    """Wait until every job in pending/ is due: a burst worker exits when none is."""

    def due():
        stamps = [PENDING_RE.match(n).group("time") for n in os.listdir(os.path.join(ctx.root, "pending")) if PENDING_RE.match(n)]
        return all(datetime.strptime(t, "%Y%m%dT%H%M%S.%fZ" if "." in t else "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp() <= time.time() for t in stamps)

    wait_until(due, timeout=5, message="a pending job never became due")


def burst(root):
    CliSpool(root).run("worker", "start", "--burst", check=0)


Expect = namedtuple("Expect", "listing state attempts error extra", defaults=(None,))
GONE = "gone"  # Expect.state of a purged job
# listing: what listing() must return exactly. state None: the file is a drop-in or a rejected file
# and must hold the bytes its writer wrote; otherwise a job with this state, attempts and last_error
# (None, or the prefix it must start with); extra(job) may check more.


def check(ctx, expect, when=""):
    got = listing(ctx.root)
    assert got == expect.listing, f"{when}: spool holds {got}, wanted {expect.listing}"
    places = [(f, n) for f in ("pending", "held", "processing", "done", "dead", "rejected") for n in got.get(f, []) if not n.endswith(".reason")]
    if expect.state == GONE:  # purged: the job, its logs and its id reservation, all of them
        assert places == [] and os.listdir(os.path.join(ctx.root, "logs")) == [], f"{when}: {places}"
        return None
    assert len(places) == 1, f"{when}: the job is in {places}, wanted exactly one place"
    folder, name = places[0]
    if folder in ("pending", "held") and name.startswith("TIME_"):
        name = pending_name(ctx, name[5:-5], folder)
    with open(os.path.join(ctx.root, folder, name), "rb") as f:
        data = f.read()
    if expect.state is None:
        assert data == ctx.original, f"{when}: {folder}/{name} changed"
        return None
    job = json.loads(data)  # complete, valid JSON
    jobdoc.validate(job)
    assert job["id"] == "j1"
    assert (job["state"], job["attempts"], len(job["history"])) == (expect.state, expect.attempts, expect.attempts), f"{when}: {job}"
    if expect.error is None:
        assert job["last_error"] is None, f"{when}: {job}"
    else:
        assert job["last_error"].startswith(expect.error), f"{when}: {job}"
        if job["history"]:  # a job cancelled while it waited has no attempt to say so
            assert job["history"][-1]["error"] == job["last_error"]
    if expect.error == LOST:
        lost = job["history"][-1]
        assert lost["exit_code"] is None and re.fullmatch(WORKER, lost["worker"]) and lost["worker"] != procs.worker_id(), lost
    assert reserved_token(ctx.root, job["id"]) == job["token"], f"{when}: ids/{job['id']} does not name the job's token"
    if expect.extra:
        expect.extra(job)
    return job


# -- the transitions --------------------------------------------------------------------------------


def run_worker(ctx):
    Worker(ctx.spool(), burst=True).run()


def plant_claim(ctx, job_id, holder):
    """Claim job ID's pending file for HOLDER, as a worker named HOLDER would have (a rename)."""
    name = pending_name(ctx, job_id)
    cname = layout.claim_name("run", name, holder)
    os.rename(os.path.join(ctx.root, "pending", name), os.path.join(ctx.root, "processing", cname))
    return cname


def dead_holder_claim(ctx, job_id):
    """A claim in processing/ whose holder has died (a reaped child that claimed the job)."""
    name = pending_name(ctx, job_id)
    assert run_child(lambda: ctx.spool().take("run", name)) == 0
    (cname,) = os.listdir(os.path.join(ctx.root, "processing"))
    assert parse_claim(cname)[:2] == ("run", job_id)


def make_dead(ctx, doc):
    """A job that used its only attempt (exit 1) and sits in dead/."""
    job_id = enqueue(ctx, dict(doc, max_retries=0))
    spool, t = ctx.spool(), time.time()
    claim = spool.take("run", pending_name(ctx, job_id))
    job, nb = policy.record_attempt(
        spool.read_claim(claim), started=t, finished=t, exit_code=1, error=None, worker=spool.wid, log=None, base=2, maximum=0
    )
    assert spool.finish(claim, job, nb) == ("dead", "j1.json")


def make_done(ctx, doc):
    """A job that succeeded at its first attempt, printing a line (logs/j1.1.log), in done/."""
    job_id = enqueue(ctx, doc)
    spool, t = ctx.spool(), time.time()
    claim = spool.take("run", pending_name(ctx, job_id))
    fd = spool.open_log(job_id, 1)
    os.write(fd, b"hi\n")
    os.close(fd)
    job, nb = policy.record_attempt(
        spool.read_claim(claim), started=t, finished=t, exit_code=0, error=None, worker=spool.wid, log="j1.1.log", base=2, maximum=0
    )
    assert spool.finish(claim, job, nb) == ("done", "j1.json")


def stop_twice_from_outside(ctx):
    """Send the worker that runs j1's first attempt two stop signals, as an operator would (a job's
    own signals to its worker are ignored): once the job runs, a SIGTERM; once the worker says in
    its heartbeat that it is stopping (so that the two are not merged into one), a second one."""

    def worker_pid():
        if not os.path.isdir(ctx.lockdir):
            return None
        claims = [parse_claim(n) for n in os.listdir(os.path.join(ctx.root, "processing"))]
        holders = [c[2] for c in claims if c and c[0] == "run"]
        return (holders[0], procs.split_worker_id(holders[0]).pid) if holders else None

    def heartbeat(wid):
        try:
            with open(os.path.join(ctx.root, "workers", wid + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def signal_it():
        try:
            wid, pid = wait_until(worker_pid, timeout=20, message="j1 never started")
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: "stopping_since" in heartbeat(wid), timeout=20, message="the worker never took the stop request")
            os.kill(pid, signal.SIGTERM)
        except (AssertionError, OSError) as e:  # the test then fails on what the crash left
            print(f"stop_twice_from_outside: {e}")

    threading.Thread(target=signal_it, daemon=True).start()


def cancel_once_running(ctx):
    """Ask for j1's cancel through requests/, as `queuectl cancel` from another host would, once
    its first attempt runs (the job made ctx.lockdir)."""

    def ask():
        try:
            wait_until(lambda: os.path.isdir(ctx.lockdir), timeout=20, message="j1 never started")
            ctx.spool().request("j1", "cancel", b"{}")
        except AssertionError as e:  # the test then fails on what the crash left
            print(f"cancel_once_running: {e}")

    threading.Thread(target=ask, daemon=True).start()


def hold_now(ctx):
    spool = ctx.spool()
    assert spool.hold(pending_name(ctx, "j1"))


def _has_previous_run(job):
    assert [(r["attempts"], len(r["history"])) for r in job["previous_runs"]] == [(1, 1)], job


def _no_previous_run(job):
    assert "previous_runs" not in job, job


P = {"pending": ["TIME_j1.json"], "ids": ["j1"]}
H = {"held": ["TIME_j1.json"], "ids": ["j1"]}
DONE = {"done": ["j1.json"], "ids": ["j1"]}
DEAD = {"dead": ["j1.json"], "ids": ["j1"]}

Case = namedtuple("Case", "setup step trap left recovered final backoff_max", defaults=("0",))
# left: listing(any_worker=True) right after the crash: the table's "a crash before/after it leaves"
HB = {"workers": ["W.json"]}  # the heartbeat of a worker that died
FENCED = ["qc-W.fence", "qc-W.write"]  # a claim past its fence, beside its new version (its stage)


def L(*parts, **folders):
    out = {}
    for part in parts + (folders,):
        out.update(part)
    return out


CASES = {
    # 1: Spool.enqueue, the commit is the rename tmp/ -> pending/
    "enqueue": Case(
        setup=lambda ctx: None,
        step=lambda ctx: ctx.spool().enqueue([jobdoc.accept({"id": "j1", "command": "true"}, time.time(), 3)]),
        trap=("rename", moves("tmp", "pending")),
        left={"before": {"tmp": ["qc-W.enqueue"], "ids": ["j1"]}, "after": P},
        recovered={w: Expect(P, "pending", 0, None) for w in ("before", "after")},
        final={w: Expect(DONE, "completed", 1, None) for w in ("before", "after")},
    ),
    # 2: a worker adopts a drop-in: pending/ -> processing/*.adopt -> tmp/ rewrite -> pending/
    "adopt": Case(
        setup=lambda ctx: drop_in(ctx, "j1.json", b'{"command": "true"}'),
        step=run_worker,
        trap=("rename", moves("tmp", "pending")),
        left={
            "before": L(HB, tmp=FENCED, ids=["j1"]),
            "after": L(HB, P, tmp=["qc-W.fence"]),
        },
        recovered={w: Expect(P, "pending", 0, None) for w in ("before", "after")},
        final={w: Expect(DONE, "completed", 1, None) for w in ("before", "after")},
    ),
    # 3: a worker rejects a drop-in that is not JSON: the commit is the link into rejected/
    "reject": Case(
        setup=lambda ctx: drop_in(ctx, "bad.json", b"{not json"),
        step=run_worker,
        trap=("link", moves("processing", "rejected")),
        left={
            "before": L(HB, processing=["bad.json@W.adopt"]),
            "after": L(HB, processing=["bad.json@W.adopt"], rejected=["bad.json"]),
        },
        recovered={
            "before": Expect({"pending": ["bad.json"]}, None, None, None),
            "after": Expect({"rejected": ["bad.json", "bad.json.reason"]}, None, None, None),
        },
        final={
            "before": Expect({"rejected": ["bad.json", "bad.json.reason"]}, None, None, None),
            "after": Expect({"rejected": ["bad.json", "bad.json.reason"]}, None, None, None),
        },
    ),
    # 4: a worker claims a due job
    "claim": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true"}),
        step=run_worker,
        trap=("rename", moves("pending", "processing")),
        left={"before": L(HB, P), "after": L(HB, processing=["j1@W.json"], ids=["j1"])},
        recovered={"before": Expect(P, "pending", 0, None), "after": Expect(P, "failed", 1, LOST)},
        final={"before": Expect(DONE, "completed", 1, None), "after": Expect(DONE, "completed", 2, None)},
    ),
    # 5: the attempt exited 0: settle to done/
    "finish-ok": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true"}),
        step=run_worker,
        trap=("rename", moves("tmp", "done")),
        left={"before": L(HB, tmp=FENCED, ids=["j1"]), "after": L(HB, DONE, tmp=["qc-W.fence"])},
        recovered={w: Expect(DONE, "completed", 1, None) for w in ("before", "after")},
        final={w: Expect(DONE, "completed", 1, None) for w in ("before", "after")},
    ),
    # 6: the attempt failed with retries left: settle to pending/ with a later not-before
    "retry": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": f"test -e {ctx.flag}", "max_retries": 3}),
        step=run_worker,
        trap=("rename", moves("tmp", "pending")),
        left={"before": L(HB, tmp=FENCED, ids=["j1"]), "after": L(HB, P, tmp=["qc-W.fence"])},
        recovered={w: Expect(P, "failed", 1, "exited with status 1") for w in ("before", "after")},
        final={w: Expect(DONE, "completed", 2, None) for w in ("before", "after")},
        # not due at once: the dying worker must not claim the retry before the crash (see
        # test_a_retry_claimed_while_its_commit_finishes_keeps_its_claim)
        backoff_max="0.5",
    ),
    # 7: the last attempt failed: settle to dead/
    "dead": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "exit 3", "max_retries": 0}),
        step=run_worker,
        trap=("rename", moves("tmp", "dead")),
        left={"before": L(HB, tmp=FENCED, ids=["j1"]), "after": L(HB, DEAD, tmp=["qc-W.fence"])},
        recovered={w: Expect(DEAD, "dead", 1, "exited with status 3") for w in ("before", "after")},
        final={w: Expect(DEAD, "dead", 1, "exited with status 3") for w in ("before", "after")},
    ),
    # 8: a worker recovers a dead holder's claim: the lost attempt counts, retries left -> pending/
    "recovery": Case(
        setup=lambda ctx: (enqueue(ctx, {"id": "j1", "command": "true", "max_retries": 3}), dead_holder_claim(ctx, "j1")),
        step=run_worker,
        trap=("rename", moves("tmp", "pending")),
        left={"before": L(HB, tmp=FENCED, ids=["j1"]), "after": L(HB, P, tmp=["qc-W.fence"])},
        recovered={w: Expect(P, "failed", 1, LOST) for w in ("before", "after")},  # counted once, not twice
        final={w: Expect(DONE, "completed", 2, None) for w in ("before", "after")},
    ),
    # 8 again, when the lost attempt was the last one -> dead/
    "recovery-dead": Case(
        setup=lambda ctx: (enqueue(ctx, {"id": "j1", "command": "true", "max_retries": 0}), dead_holder_claim(ctx, "j1")),
        step=lambda ctx: Recovery(ctx.spool(), Watched(ctx.spool().config_path), lambda m: None).run(time.time()),
        trap=("rename", moves("tmp", "dead")),
        left={"before": L(tmp=FENCED, ids=["j1"]), "after": L(DEAD, tmp=["qc-W.fence"])},
        recovered={w: Expect(DEAD, "dead", 1, LOST) for w in ("before", "after")},
        final={w: Expect(DEAD, "dead", 1, LOST) for w in ("before", "after")},
    ),
    # 9: `dlq retry`: dead/ -> processing/ -> pending/ with attempts 0
    "dlq-retry": Case(
        setup=lambda ctx: make_dead(ctx, {"id": "j1", "command": f"test -e {ctx.flag}"}),
        step=lambda ctx: dlq.retry(ctx.spool(), ["j1"], False),
        trap=("rename", moves("tmp", "pending")),
        left={
            "before": L(tmp=FENCED, ids=["j1"]),
            "after": L(P, tmp=["qc-W.fence"]),
        },
        recovered={w: Expect(P, "pending", 0, None, _has_previous_run) for w in ("before", "after")},
        final={w: Expect(DONE, "completed", 1, None, _has_previous_run) for w in ("before", "after")},
    ),
    # the fence of 5: the claim renamed into tmp/ beside its stage
    "fence-finish-ok": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true"}),
        step=run_worker,
        trap=("rename", moves("processing", "tmp")),
        left={"before": L(HB, processing=["j1@W.json"], tmp=["qc-W.write"], ids=["j1"]), "after": L(HB, tmp=FENCED, ids=["j1"])},
        recovered={"before": Expect(P, "failed", 1, LOST), "after": Expect(DONE, "completed", 1, None)},
        final={"before": Expect(DONE, "completed", 2, None), "after": Expect(DONE, "completed", 1, None)},
    ),
    # the fence of 2: an adoption
    "fence-adopt": Case(
        setup=lambda ctx: drop_in(ctx, "j1.json", b'{"command": "true"}'),
        step=run_worker,
        trap=("rename", moves("processing", "tmp")),
        left={"before": L(HB, processing=["j1.json@W.adopt"], tmp=["qc-W.write"], ids=["j1"]), "after": L(HB, tmp=FENCED, ids=["j1"])},
        recovered={
            "before": Expect({"pending": ["j1.json"], "ids": ["j1"]}, None, None, None),
            "after": Expect(P, "pending", 0, None),
        },
        final={w: Expect(DONE, "completed", 1, None) for w in ("before", "after")},
    ),
    # the fence of 9: a dlq retry
    "fence-dlq-retry": Case(
        setup=lambda ctx: make_dead(ctx, {"id": "j1", "command": f"test -e {ctx.flag}"}),
        step=lambda ctx: dlq.retry(ctx.spool(), ["j1"], False),
        trap=("rename", moves("processing", "tmp")),
        left={"before": L(processing=["j1@W.revive"], tmp=["qc-W.write"], ids=["j1"]), "after": L(tmp=FENCED, ids=["j1"])},
        recovered={
            "before": Expect(DEAD, "dead", 1, "exited with status 1", _no_previous_run),
            "after": Expect(P, "pending", 0, None, _has_previous_run),
        },
        final={
            "before": Expect(DEAD, "dead", 1, "exited with status 1", _no_previous_run),
            "after": Expect(DONE, "completed", 1, None, _has_previous_run),
        },
    ),
    # 11: `queuectl purge` (and retention): done/ -> tmp/*.purge, then its logs, ids/<id>, the file
    "purge": Case(
        setup=lambda ctx: make_done(ctx, {"id": "j1", "command": "echo hi"}),
        step=lambda ctx: retention.purge(ctx.spool(), ["completed"], 0, time.time()),
        trap=("rename", moves("done", "tmp")),
        left={"before": DONE, "after": L(tmp=["qc-W.purge"], ids=["j1"])},
        recovered={"before": Expect(DONE, "completed", 1, None), "after": Expect({}, GONE, None, None)},
        final={"before": Expect(DONE, "completed", 1, None), "after": Expect({}, GONE, None, None)},
    ),
    # 10: a second stop signal during the attempt: the job goes back to pending/ unchanged
    "release": Case(
        setup=lambda ctx: (
            enqueue(
                ctx,
                # the first run waits to be stopped; later runs just exit 0
                {"id": "j1", "command": f"mkdir {ctx.lockdir} 2>/dev/null || exit 0; sleep 30"},
            ),
            stop_twice_from_outside(ctx),
        ),
        step=run_worker,
        trap=("link", moves("processing", "pending")),
        left={"before": L(HB, processing=["j1@W.json"], ids=["j1"]), "after": L(HB, P, processing=["j1@W.json"])},
        recovered={"before": Expect(P, "failed", 1, LOST), "after": Expect(P, "pending", 0, None)},
        final={"before": Expect(DONE, "completed", 2, None), "after": Expect(DONE, "completed", 1, None)},
    ),
    # 11: `queuectl cancel` of a waiting job: pending/ -> processing/*.cancel -> (fence) -> dead/
    "cancel": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true"}),
        step=lambda ctx: jobctl.cancel(ctx.spool(), "j1", time.time(), time.monotonic),
        trap=("rename", moves("tmp", "dead")),
        left={"before": L(tmp=FENCED, ids=["j1"]), "after": L(DEAD, tmp=["qc-W.fence"])},
        recovered={w: Expect(DEAD, "dead", 0, "cancelled") for w in ("before", "after")},
        final={w: Expect(DEAD, "dead", 0, "cancelled") for w in ("before", "after")},
    ),
    # the fence of 11: before it, the `.cancel` claim goes back to pending/ (the cancel did not happen)
    "fence-cancel": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true"}),
        step=lambda ctx: jobctl.cancel(ctx.spool(), "j1", time.time(), time.monotonic),
        trap=("rename", moves("processing", "tmp")),
        left={"before": L(processing=["j1@W.cancel"], tmp=["qc-W.write"], ids=["j1"]), "after": L(tmp=FENCED, ids=["j1"])},
        recovered={"before": Expect(P, "pending", 0, None), "after": Expect(DEAD, "dead", 0, "cancelled")},
        final={"before": Expect(DONE, "completed", 1, None), "after": Expect(DEAD, "dead", 0, "cancelled")},
    ),
    # 11 from held/: the `.hcancel` claim
    "cancel-held": Case(
        setup=lambda ctx: (enqueue(ctx, {"id": "j1", "command": "true"}), hold_now(ctx)),
        step=lambda ctx: jobctl.cancel(ctx.spool(), "j1", time.time(), time.monotonic),
        trap=("rename", moves("processing", "tmp")),
        left={"before": L(processing=["j1@W.hcancel"], tmp=["qc-W.write"], ids=["j1"]), "after": L(tmp=FENCED, ids=["j1"])},
        recovered={"before": Expect(H, "pending", 0, None), "after": Expect(DEAD, "dead", 0, "cancelled")},
        final={"before": Expect(H, "pending", 0, None), "after": Expect(DEAD, "dead", 0, "cancelled")},
    ),
    # 12: a running attempt cancelled through requests/j1.cancel: its worker stops it, commits to dead/
    "cancel-running": Case(
        setup=lambda ctx: (
            enqueue(ctx, {"id": "j1", "command": f"mkdir {ctx.lockdir} 2>/dev/null || exit 0; sleep 30", "max_retries": 3}),
            cancel_once_running(ctx),
        ),
        step=run_worker,
        trap=("rename", moves("tmp", "dead")),
        left={
            "before": L(HB, tmp=FENCED, ids=["j1"], requests=["j1.cancel"]),
            "after": L(HB, DEAD, tmp=["qc-W.fence"], requests=["j1.cancel"]),
        },
        recovered={w: Expect(DEAD, "dead", 1, "cancelled") for w in ("before", "after")},
        final={w: Expect(DEAD, "dead", 1, "cancelled") for w in ("before", "after")},
    ),
    # 12, its claim lost before the fence: the lost attempt is cancelled too, not retried
    "cancel-running-lost": Case(
        setup=lambda ctx: (
            enqueue(ctx, {"id": "j1", "command": f"mkdir {ctx.lockdir} 2>/dev/null || exit 0; sleep 30", "max_retries": 3}),
            cancel_once_running(ctx),
        ),
        step=run_worker,
        trap=("rename", moves("processing", "tmp")),
        left={
            "before": L(HB, processing=["j1@W.json"], tmp=["qc-W.write"], ids=["j1"], requests=["j1.cancel"]),
            "after": L(HB, tmp=FENCED, ids=["j1"], requests=["j1.cancel"]),
        },
        recovered={w: Expect(DEAD, "dead", 1, "cancelled") for w in ("before", "after")},
        final={w: Expect(DEAD, "dead", 1, "cancelled") for w in ("before", "after")},
    ),
    # 13: `queuectl hold` of a waiting job: pending/ -> held/
    "hold": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true"}),
        step=lambda ctx: jobctl.hold(ctx.spool(), "j1", time.time()),
        trap=("rename", moves("pending", "held")),
        left={"before": P, "after": H},
        recovered={"before": Expect(P, "pending", 0, None), "after": Expect(H, "pending", 0, None)},
        final={"before": Expect(DONE, "completed", 1, None), "after": Expect(H, "pending", 0, None)},
    ),
    # 14: a hold asked while the attempt ran: its failed attempt goes to held/, not pending/
    "hold-running": Case(
        setup=lambda ctx: (
            enqueue(ctx, {"id": "j1", "command": f"test -e {ctx.flag}", "max_retries": 3}),
            ctx.spool().request("j1", "hold", b"{}"),
        ),
        step=run_worker,
        trap=("rename", moves("tmp", "held")),
        left={
            "before": L(HB, tmp=FENCED, ids=["j1"], requests=["j1.hold"]),
            "after": L(HB, H, tmp=["qc-W.fence"], requests=["j1.hold"]),
        },
        recovered={w: Expect(H, "failed", 1, "exited with status 1") for w in ("before", "after")},
        final={w: Expect(H, "failed", 1, "exited with status 1") for w in ("before", "after")},
    ),
    # 15: `queuectl release`: held/ -> pending/
    "release-held": Case(
        setup=lambda ctx: (enqueue(ctx, {"id": "j1", "command": "true"}), hold_now(ctx)),
        step=lambda ctx: jobctl.release(ctx.spool(), "j1"),
        trap=("rename", moves("held", "pending")),
        left={"before": H, "after": P},
        recovered={"before": Expect(H, "pending", 0, None), "after": Expect(P, "pending", 0, None)},
        final={"before": Expect(H, "pending", 0, None), "after": Expect(DONE, "completed", 1, None)},
    ),
    # 16: `queuectl retry` of a job not due yet: renamed due now
    "retry-now": Case(
        setup=lambda ctx: enqueue(ctx, {"id": "j1", "command": "true", "run_at": iso_in(3)}),
        step=lambda ctx: jobctl.retry(ctx.spool(), "j1", time.time()),
        trap=("rename", moves("pending", "pending")),
        left={"before": P, "after": P},
        recovered={w: Expect(P, "pending", 0, None) for w in ("before", "after")},
        final={w: Expect(DONE, "completed", 1, None) for w in ("before", "after")},
    ),
}


def iso_in(seconds):
    return datetime.fromtimestamp(time.time() + seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_every_transition_of_the_table_has_its_crash_cases():
    names = {t.name.replace(" ", "-") for t in layout.TRANSITIONS}
    assert names <= set(CASES), f"transitions with no crash-point case: {names - set(CASES)}"


def _points():
    for transition in CASES:
        for when in ("before", "after"):
            yield pytest.param(transition, when, id=f"{transition}-{when}")


@pytest.mark.parametrize("transition,when", list(_points()))
def test_crash_at_commit_point(tmp_path, transition, when):
    case = CASES[transition]
    ctx = Ctx(tmp_path, case.backoff_max)
    case.setup(ctx)

    rc = run_child(lambda: case.step(ctx), trap=case.trap + (when,))
    assert rc == CRASHED, f"the child exited {rc} without reaching its crash point"
    assert listing(ctx.root, any_worker=True) == case.left[when], "what the crash left"

    log = recover(ctx.root)
    check(ctx, case.recovered[when], f"after recovery ({log})")

    open(ctx.flag, "w").close()  # from now on a `test -e FLAG` job succeeds
    wait_due(ctx)
    burst(ctx.root)
    check(ctx, case.final[when], "after a burst worker")


def test_crash_in_a_batch_enqueue_between_two_renames(tmp_path):
    """A batch is acknowledged only when enqueue returns. A crash between two of its renames may
    leave each job pending (renamed, or rolled forward by recovery because its id is reserved for
    it) or nowhere with its id free: never half there, never twice, never an id held by no job."""
    ctx = Ctx(tmp_path)
    batch = [jobdoc.accept({"id": i, "command": "true"}, time.time(), 3) for i in ("a", "b", "c")]
    rc = run_child(lambda: ctx.spool().enqueue(batch), trap=("rename", moves("tmp", "pending"), "before", 2))
    assert rc == CRASHED
    recover(ctx.root)
    kept = listing(ctx.root).get("ids", [])
    assert "a" in kept  # its rename was done before the crash
    assert listing(ctx.root) == {"pending": [f"TIME_{i}.json" for i in kept], "ids": kept}
    for job_id in kept:
        with open(os.path.join(ctx.root, "pending", pending_name(ctx, job_id)), "rb") as f:
            job = json.loads(f.read())
        assert (job["id"], job["state"], job["attempts"]) == (job_id, "pending", 0)
        assert reserved_token(ctx.root, job_id) == job["token"]
    burst(ctx.root)
    assert listing(ctx.root) == {"done": [f"{i}.json" for i in kept], "ids": kept}


# -- PID reuse --------------------------------------------------------------------------------------


def test_claim_whose_pid_now_belongs_to_another_process_is_recovered(tmp_path):
    ctx = Ctx(tmp_path)
    enqueue(ctx, {"id": "j1", "command": "true"})
    me = procs.split_worker_id(procs.worker_id(os.getpid()))
    impostor = layout.worker_name(me.host, me.pid, me.start + 1, me.ns)  # this process's pid, but another start time
    assert parse_claim(plant_claim(ctx, "j1", impostor)) == ("run", "j1", impostor)

    recover(ctx.root)  # run by this very process: the pid is alive, the holder is not

    job = check(ctx, Expect(P, "failed", 1, LOST), "after recovery")
    assert job["history"][0]["worker"] == impostor
    burst(ctx.root)
    check(ctx, Expect(DONE, "completed", 2, None), "after a burst worker")


def test_an_interrupted_dlq_retry_of_the_previous_version_goes_back_to_dead(tmp_path):
    """Before claims recorded their operation, `dlq retry` claimed dead/ID.json under a run-shaped
    name (TIME_ID@WORKER.json): a spool upgraded with one such claim left must not count it as a
    lost attempt of a dead job."""
    ctx = Ctx(tmp_path)
    make_dead(ctx, {"id": "j1", "command": "true"})
    me = procs.split_worker_id(procs.worker_id(os.getpid()))
    gone = layout.worker_name(me.host, me.pid, me.start + 1, me.ns)  # a process that no longer runs
    old_claim = layout.claim_name("run", layout.pending_name(time.time(), "j1"), gone)
    os.rename(os.path.join(ctx.root, "dead", "j1.json"), os.path.join(ctx.root, "processing", old_claim))

    log = recover(ctx.root)

    check(ctx, Expect(DEAD, "dead", 1, "exited with status 1", _no_previous_run), f"after recovery ({log})")


def test_claims_of_live_processes_are_left_alone_until_they_die(tmp_path):
    ctx = Ctx(tmp_path)
    enqueue(ctx, {"id": "j1", "command": "true"})
    enqueue(ctx, {"id": "j2", "command": "true"})
    me = procs.worker_id(os.getpid())
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        other = procs.worker_id(sleeper.pid)
        plant_claim(ctx, "j1", me)
        plant_claim(ctx, "j2", other)
        held = {"processing": sorted([f"j1@{me}.json", f"j2@{other}.json"]), "ids": ["j1", "j2"]}

        # recovery in another process (a forked child) and in this one: both holders are alive
        assert run_child(lambda: recover(ctx.root)) == 0
        recover(ctx.root)
        assert listing(ctx.root) == held
        assert sleeper.poll() is None  # recovery killed nothing

        sleeper.kill()
        sleeper.wait()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()

    assert run_child(lambda: recover(ctx.root)) == 0
    assert listing(ctx.root) == {"pending": ["TIME_j2.json"], "processing": [f"j1@{me}.json"], "ids": ["j1", "j2"]}
    with open(os.path.join(ctx.root, "pending", pending_name(ctx, "j2")), "rb") as f:
        job = json.loads(f.read())
    assert (job["state"], job["attempts"], job["history"][0]["worker"]) == ("failed", 1, other)
    assert job["last_error"].startswith(LOST)


# -- the orphaned process group of a killed worker ------------------------------------------------


def _group_members(pgid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            out.append(int(p))
    return out


def test_worker_killed_mid_job_leaves_no_orphan_and_its_job_is_recovered(spool, tmp_path):
    spool.run("config", "set", "backoff-max", "0", check=0)
    pidfile = tmp_path / "job.pid"
    # the first run records its shell's pid (its process group: the job runs in its own session)
    # and sleeps; the retry after the recovery just exits 0
    cmd = f"if [ -e {pidfile} ]; then exit 0; fi; echo $$ > {pidfile}.new && mv {pidfile}.new {pidfile}; sleep 300"
    spool.start_workers(count=1)
    spool.enqueue({"id": "orphan", "command": cmd, "max_retries": 2})

    def holder():
        held = [w for w in spool.live_workers() if w["job"] == "orphan"]
        return pidfile.exists() and held and held[0]

    worker = wait_until(holder, timeout=20, message="no worker ran the job")
    job_pid = int(pidfile.read_text())
    try:
        group = _group_members(job_pid)
        assert job_pid in group  # the job's shell leads its own process group, and it runs

        os.kill(worker["pid"], signal.SIGKILL)

        def completed():
            job = spool.show("orphan")
            return job["state"] == "completed" and job

        job = wait_until(completed, timeout=30, message="the job was not recovered and run again")
        lost, rerun = job["history"]
        assert lost["error"].startswith("worker lost"), lost
        assert (lost["attempt"], lost["exit_code"], lost["worker"]) == (1, None, worker["id"])
        assert (rerun["attempt"], rerun["exit_code"]) == (2, 0) and rerun["worker"] != worker["id"]
        # the replacement worker killed the lost job's whole process group (kill_orphans)
        wait_until(lambda: not _group_members(job_pid), timeout=5, message=f"the orphaned job {group} still runs")
        assert all(procs.process_alive(p, 0) is False for p in group)
    finally:
        if _group_members(job_pid):  # do not leave the test's own job behind when it fails
            os.killpg(job_pid, signal.SIGKILL)


# -- crash points found by sweeping every os call of the steps above --------------------------------


def _creates_ids_j1(*args):
    """A trap predicate: the symlink that brings ids/j1 into being (both enqueue and adoption
    reserve an id with a symlink whose target is the job's token)."""
    return len(args) >= 2 and os.fsdecode(args[1]).endswith(os.path.join("ids", "j1"))  # os.symlink(token, dst)


@pytest.mark.parametrize("step", ["enqueue", "adopt"])
def test_crash_right_after_reserving_the_id_does_not_burn_it(tmp_path, step):
    """A process that dies just after ids/j1 appears (by symlink) must not leave the
    id taken by a reservation that names no job. An enqueue is not acknowledged yet: recovery may
    finish it (the id names its token) or drop it (the id is free again for the writer's retry). A
    drop-in is acknowledged once renamed into pending/: it must still be adopted and run."""
    ctx = Ctx(tmp_path)
    accepted = jobdoc.accept({"id": "j1", "command": "true"}, time.time(), 3)
    if step == "enqueue":
        run = lambda: ctx.spool().enqueue([accepted])  # noqa: E731
    else:
        drop_in(ctx, "j1.json", b'{"command": "true"}')
        run = lambda: run_worker(ctx)  # noqa: E731
    rc = run_child(run, trap=("symlink", _creates_ids_j1, "after"))
    assert rc == CRASHED, f"{step} did not reserve ids/j1 with os.symlink"

    recover(ctx.root)

    if step == "adopt":
        burst(ctx.root)
        check(ctx, Expect(DONE, "completed", 1, None), "after recovery and a burst worker")
    elif listing(ctx.root).get("pending"):  # rolled forward: the job holds the id
        check(ctx, Expect(P, "pending", 0, None), "after recovery")
        assert reserved_token(ctx.root, "j1") == accepted[0]["token"]
    else:  # dropped: the id is free for the writer's retry
        assert listing(ctx.root) in ({}, {"ids": ["j1"]})
        again = jobdoc.accept({"id": "j1", "command": "true"}, time.time(), 3)
        assert ctx.spool().enqueue([again]) == ["j1"], "the id stayed reserved for a job that does not exist"
        assert listing(ctx.root) == P


def test_crash_during_a_heartbeat_write_leaves_nothing_in_workers(tmp_path):
    ctx = Ctx(tmp_path)
    rc = run_child(lambda: run_worker(ctx), trap=("rename", moves("workers", "workers"), "before"))
    assert rc == CRASHED
    recover(ctx.root)
    assert listing(ctx.root) == {}


# -- the old copy is removed after the new one is visible: it must not be someone else's file --------


def _slow_commit_of_the_retry(ctx, started, go, timeout=2.0):
    """In this (worker) process: the fsync of pending/ that commits a retry waits until the retry's
    next attempt has STARTED (a slow disk; only a worker that commits off its main thread gets
    that far meanwhile), and GO is created once the commit has removed its old claim."""
    real_fsync, real_unlink = os.fsync, os.unlink
    pending = os.path.join(ctx.root, "pending")

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == pending:
            try:
                wait_until(lambda: os.path.exists(started), timeout=timeout)
            except AssertionError:
                pass  # nothing ran meanwhile: a worker that commits on its main thread
        return real_fsync(fd)

    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if _folder(path) == "processing":
            open(go, "w").close()

    os.fsync = fsync
    os.unlink = unlink


def test_a_retry_claimed_while_its_commit_finishes_keeps_its_claim(tmp_path):
    """A worker may claim a retry as soon as it is in pending/, even while the commit that put it
    there has yet to remove the old claim. That removal must not take the new claim with it: the
    job would then run (and could crash) with no copy left anywhere in the spool."""
    ctx = Ctx(tmp_path)  # backoff-max 0: the retry is due the moment it is in pending/
    started, go, seen = (str(tmp_path / n) for n in ("started", "go", "seen"))
    # attempt 2 says it started, waits (3 s at most) for the commit of attempt 1 to end, and lists processing/
    command = (
        f'[ "$QUEUECTL_ATTEMPT" = 1 ] && exit 1; touch {started}; '
        f"i=0; while [ ! -e {go} ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done; "
        f'ls "$QUEUECTL_SPOOL/processing" > {seen}; exit 1'
    )
    enqueue(ctx, {"id": "j1", "command": command, "max_retries": 1})

    def step():
        _slow_commit_of_the_retry(ctx, started, go)
        run_worker(ctx)

    assert run_child(step) == 0
    with open(seen) as f:
        claims = [parse_claim(n) for n in f.read().split()]
    assert [c[:2] for c in claims] == [("run", "j1")], f"during attempt 2, processing/ held {claims}"
    check(ctx, Expect(DEAD, "dead", 2, "exited with status 1"), "after the worker")
