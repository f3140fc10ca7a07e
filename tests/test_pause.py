"""`queuectl pause` / `queuectl resume`: a spool-wide pause (SPOOL/paused) that real workers obey.

Each test proves that a worker went through its claim step while paused before it asserts that a
job was not run: the worker logs "spool paused" when it declines a due job, and a drop-in sent
after the pause has been adopted (intake runs just before the claim step)."""

import json
import os
import re
import signal
import stat
import subprocess

import pytest

from conftest import QUEUECTL, wait_until

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def start_logged(spool, tmp_path, *args, name="pool"):
    """`queuectl worker start ARGS` in the background, its stderr in a file; returns (Popen, read)."""
    log = tmp_path / f"{name}.log"
    out = open(log, "w")
    p = subprocess.Popen([QUEUECTL, "worker", "start", *args], env=spool.env, stdout=subprocess.DEVNULL, stderr=out, text=True)
    out.close()
    spool.procs.append(p)
    read = lambda: log.read_text()  # noqa: E731
    count = int(args[args.index("--count") + 1]) if "--count" in args else 1
    wait_until(lambda: read().count("started;") >= count or p.poll() is not None, timeout=20)
    assert p.poll() is None, read()
    return p, read


def stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0


def paused_and_adopted(read, dropin):
    """The worker declined a due job because of the pause, and adopted DROPIN (sent after it)."""

    def seen():
        text = read()
        return "spool paused by " in text and f"adopted {dropin!r} as job" in text

    return seen


def test_a_paused_spool_lets_the_running_job_finish_and_starts_nothing_new(spool, tmp_path):
    go = tmp_path / "go"
    p, read = start_logged(spool, tmp_path, "--count", "2")  # one runs the long job, the other is idle
    spool.enqueue({"id": "running", "command": f"while [ ! -e {go} ]; do sleep 0.02; done; echo finished"})
    spool.wait_counts(processing=1)
    p_pause = spool.run("pause", check=0)
    assert p_pause.stdout == "" and "paused" in p_pause.stderr
    spool.enqueue({"id": "later", "command": "true"})
    spool.drop_in("dropped.json", {"command": "true"})
    wait_until(paused_and_adopted(read, "dropped.json"), timeout=20)
    go.touch()
    spool.wait_counts(completed=1)
    assert spool.show("running")["state"] == "completed"  # the running job finished, unharmed
    counts = spool.counts()
    assert (counts["pending"], counts["processing"], counts["rejected"]) == (2, 0, 0), counts
    assert spool.show("later")["state"] == "pending"
    adopted = spool.show("dropped")  # the drop-in, adopted under the id its name gives
    assert (adopted["state"], adopted["attempts"]) == ("pending", 0)
    stop(p)


def test_status_says_paused_since_when_and_by_whom(spool):
    before = spool.json("status", "--json")
    assert before["paused"] is None
    assert not spool.run("status", check=0).stdout.startswith("paused")
    spool.run("pause", check=0)
    info = spool.json("status", "--json")["paused"]
    assert ISO_Z.match(info["since"]), info
    import getpass

    assert info["by"] == {"user": getpass.getuser(), "host": re.sub(r"[^A-Za-z0-9.-]", "-", os.uname().nodename)}
    first = spool.run("status", check=0).stdout.splitlines()[0]
    assert first == f"paused      since {info['since']} by {info['by']['user']}@{info['by']['host']}"
    # the file the protocol documents: JSON {"since", "by"}, private like every spool file
    path = spool.path("paused")
    assert json.loads(open(path).read()) == info
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert spool.ls("tmp") == []  # staged, linked into place, the stage removed


def test_pause_when_paused_and_resume_when_not_exit_0_with_a_note(spool):
    p = spool.run("resume", check=0)
    assert (p.stdout, p.stderr) == ("", "queuectl: not paused\n")
    spool.run("pause", check=0)
    since = spool.json("status", "--json")["paused"]["since"]
    p = spool.run("pause", check=0)
    assert p.stdout == "" and p.stderr.startswith(f"queuectl: already paused since {since} by ")
    assert spool.json("status", "--json")["paused"]["since"] == since  # the first pause stands
    p = spool.run("resume", check=0)
    assert p.stdout == "" and p.stderr.startswith(f"queuectl: resumed (paused since {since} by ")
    assert spool.json("status", "--json")["paused"] is None and not os.path.exists(spool.path("paused"))
    assert spool.run("resume", check=0).stderr == "queuectl: not paused\n"


def test_a_pause_survives_a_worker_restart_and_resume_runs_the_waiting_jobs(spool, tmp_path):
    spool.run("pause", check=0)
    spool.enqueue({"id": "a", "command": "true"})
    p, read = start_logged(spool, tmp_path, name="first")  # started while paused: it starts and idles
    spool.drop_in("first.json", {"command": "true"})
    wait_until(paused_and_adopted(read, "first.json"), timeout=20)
    assert spool.counts()["pending"] == 2 and spool.counts()["completed"] == 0
    stop(p)
    p, read = start_logged(spool, tmp_path, name="second")  # a restart: still paused
    spool.drop_in("second.json", {"command": "true"})
    wait_until(paused_and_adopted(read, "second.json"), timeout=20)
    counts = spool.counts()
    assert (counts["pending"], counts["processing"], counts["completed"]) == (3, 0, 0), counts
    spool.run("resume", check=0)
    spool.wait_counts(completed=3, pending=0)
    wait_until(lambda: "spool resumed" in read())
    stop(p)


def test_a_burst_worker_on_a_paused_spool_exits_and_leaves_the_jobs(spool):
    spool.enqueue({"id": "waits", "command": "true"})
    spool.run("pause", check=0)
    p = spool.run("worker", "start", "--burst", check=0, timeout=60)
    assert "spool paused by " in p.stderr
    assert spool.show("waits")["state"] == "pending"
    spool.run("resume", check=0)
    spool.run("worker", "start", "--burst", check=0, timeout=60)
    assert spool.show("waits")["state"] == "completed"


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_pause_that_dies_at_its_commit_point(tmp_path, when):
    """`pause` dies just before or just after its link into place (the commit point): the spool
    is not paused or paused, and recovery removes the stage it left in tmp/ once it is dead."""
    from queuectl.spool import Spool
    from test_crash_points import CRASHED, recover, run_child

    root = str(tmp_path / "spool")
    Spool(root).ensure()
    to_paused = lambda *args: len(args) >= 2 and os.fsdecode(args[1]).endswith("/paused")  # noqa: E731
    status = run_child(lambda: Spool(root).pause(b'{"since": "2026-11-29T00:00:00.000000Z"}'), trap=("link", to_paused, when))
    assert status == CRASHED
    [stage] = os.listdir(os.path.join(root, "tmp"))
    assert stage.startswith("qc-") and stage.endswith(".write")
    assert Spool(root).paused() == (when == "after")
    recover(root)
    assert os.listdir(os.path.join(root, "tmp")) == []
    assert Spool(root).paused() == (when == "after")
    assert Spool(root).pause(b"{}") == (when == "before")  # a pause stands, or one can be made now
