"""Issue 9, the trust model: a spool shared by a group, driven by real Unix users (tests/unixusers.py).

alice owns the spool (`queuectl init --group G` in her folder); bob is a member of G whom alice's
workers do not trust. Each attack of bob's fails, each honest user gets a clear message, and the
denial-of-service cases end within a deadline.
"""

import json
import os
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import QUEUECTL, Spool, wait_until
from queuectl import layout as L
from queuectl import procs
from unixusers import UserSpool, shared_dir, users


@pytest.fixture
def shared():
    with users(2, group=True) as ((alice, bob), group):
        home = shared_dir(alice)
        root = os.path.join(home, "spool")
        marks = os.path.join(home, "marks")  # jobs write `id -un` here, whoever runs them
        os.mkdir(marks)
        os.chmod(marks, 0o1777)
        a, b = UserSpool(root, alice, umask=0o002), UserSpool(root, bob, umask=0o002)
        a.run("init", "--group", group, check=0)
        ns = SimpleNamespace(a=a, b=b, root=root, alice=alice, bob=bob, group=group, marks=marks)
        ns.path = lambda *parts: os.path.join(root, *parts)
        ns.ls = lambda folder: sorted(os.listdir(os.path.join(root, folder)))
        ns.uid = lambda user: __import__("pwd").getpwnam(user).pw_uid
        ns.mark = lambda job_id: os.path.join(marks, job_id)
        try:
            yield ns
        finally:
            for s in (a, b):
                s.stop_all()
            subprocess.run([QUEUECTL, "--spool", root, "worker", "stop", "--timeout", "5"], capture_output=True, timeout=60)
            shutil.rmtree(home, ignore_errors=True)


def job(sh, job_id, command=None, **extra):
    return dict({"id": job_id, "command": command or f"id -un > {sh.mark(job_id)}"}, **extra)


def ran_as(sh, job_id):
    try:
        with open(sh.mark(job_id)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def burst(s, timeout=60):
    """A --burst worker of S's user: it must exit by itself within TIMEOUT seconds."""
    return s.run("worker", "start", "--burst", timeout=timeout)


# -- 1. config.json counts only if the spool's owner (or root) wrote it ----------------------------


def test_a_member_cannot_change_the_settings_nor_slip_in_a_config_json(shared):
    sh = shared
    p = sh.b.run("config", "set", "trusted-users", sh.bob)
    assert p.returncode == 1
    assert p.stderr.strip() == f"queuectl: only the spool's owner {sh.alice} may change its settings ({sh.path('config.json')})"
    assert not os.path.lexists(sh.path("config.json"))
    # the lock, if any, is the one the owner's init made: the member's attempt touched nothing
    assert not os.path.lexists(sh.path("config.json.lock")) or os.lstat(sh.path("config.json.lock")).st_uid == sh.uid(sh.alice)

    # hole 1: bob moves his own file over config.json (the spool's root is group-writable)
    sh.b.shell(f"printf '{{\"trusted-users\": \"{sh.bob}\", \"max-retries\": 9}}' > {sh.path('tmp', 'c')} && mv {sh.path('tmp', 'c')} {sh.path('config.json')}")
    assert os.lstat(sh.path("config.json")).st_uid == sh.uid(sh.bob)
    p = sh.a.run("config", "get", "max-retries", check=0)
    assert p.stdout == "3\n"  # the default
    assert f"ignoring {sh.path('config.json')}: it belongs to user {sh.bob}" in p.stderr and len(p.stderr.splitlines()) == 1

    bobs = sh.b.enqueue(job(sh, "bobs"))
    p = burst(sh.a)
    assert p.returncode == 0, p.stderr
    assert ran_as(sh, "bobs") is None and sh.ls("rejected") == []  # not trusted: left for a worker of bob's
    assert p.stderr.count("ignoring") == 1, p.stderr  # the worker says it once, in its log
    assert sh.a.json("show", bobs)["state"] == "pending"

    # root's change keeps the file, and the lock file it made, the owner's; the owner's own
    # change replaces bob's file
    subprocess.run([QUEUECTL, "--spool", sh.root, "config", "set", "max-retries", "5"], check=True, capture_output=True)
    assert os.lstat(sh.path("config.json")).st_uid == sh.uid(sh.alice)
    assert os.lstat(sh.path("config.json.lock")).st_uid == sh.uid(sh.alice)
    p = sh.a.run("config", "get", "max-retries", check=0)
    assert p.stdout == "5\n" and p.stderr == ""
    sh.a.run("config", "set", "max-retries", "4", check=0)
    assert sh.b.run("config", "get", "max-retries", check=0).stdout == "4\n"


# -- 2. a job of an owner the worker does not trust waits for a worker that trusts it --------------


def test_jobs_of_an_untrusted_owner_wait_for_a_worker_that_trusts_them(shared):
    sh = shared
    bobs = sh.b.enqueue(job(sh, "bobs"))
    assert sh.a.enqueue(job(sh, "alices")) == "alices"
    drop = sh.path("tmp", "drop.json")  # bob's drop-in, written as spool_layout.md says
    sh.b.shell(f"printf '{{\"id\": \"bobdrop\", \"command\": \"id -un > {sh.mark('bobdrop')}\"}}' > {drop} && mv {drop} {sh.path('pending', 'bob-drop.json')}")

    p = burst(sh.a)
    assert p.returncode == 0, p.stderr
    assert ran_as(sh, "alices") == sh.alice and ran_as(sh, "bobs") is None and ran_as(sh, "bobdrop") is None
    assert sh.ls("rejected") == []
    assert "bob-drop.json" in sh.ls("pending")  # not adopted: adoption would make it alice's
    assert os.lstat(sh.path("pending", "bob-drop.json")).st_uid == sh.uid(sh.bob)
    assert sh.b.json("show", bobs)["state"] == "pending"

    sh.a.start_workers()
    wait_until(lambda: sh.a.json("status", "--json")["workers"], timeout=20)
    wait_until(lambda: sh.a.json("status", "--json")["untrusted"], timeout=20)
    assert sh.a.json("status", "--json")["untrusted"] == [{"user": sh.bob, "uid": sh.uid(sh.bob), "pending": 2}]
    out = sh.a.run("status", check=0).stdout
    assert f"2 pending job(s) of user {sh.bob}: no running worker trusts {sh.bob}" in out
    (listed,) = [j for j in sh.b.json("list", "--json") if j["id"] == bobs]
    assert listed["waiting_for"] == f"a worker that trusts user {sh.bob}: no running worker does"

    p = burst(sh.b)  # bob's own worker runs bob's jobs, and leaves alice's alone
    assert p.returncode == 0, p.stderr
    assert ran_as(sh, "bobs") == sh.bob and ran_as(sh, "bobdrop") == sh.bob
    assert sh.b.json("show", "bobdrop")["state"] == "completed"
    wait_until(lambda: sh.a.json("status", "--json")["untrusted"] == [], timeout=10)


# -- 3. commands that rewrite a job refuse another user's job --------------------------------------


def test_dlq_retry_refuses_another_users_job_and_root_keeps_the_owner(shared):
    sh = shared
    sh.a.enqueue(job(sh, "adead", "false", max_retries=0))
    sh.b.enqueue(job(sh, "bdead", "false", max_retries=0))
    assert burst(sh.a).returncode == 0 and burst(sh.b).returncode == 0
    assert sh.ls("dead") == ["adead.json", "bdead.json"]

    p = sh.b.run("dlq", "retry", "adead")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip() == f"queuectl: job 'adead' belongs to user {sh.alice}; only {sh.alice} or root can retry it"
    assert os.lstat(sh.path("dead", "adead.json")).st_uid == sh.uid(sh.alice) and sh.ls("processing") == []

    p = sh.b.run("dlq", "retry", "--all")
    assert p.returncode == 0 and p.stdout == "bdead\n"
    assert p.stderr.strip() == f"queuectl: skipped 1 dead job(s) of user {sh.alice}: only {sh.alice} or root can retry them"
    assert sh.ls("dead") == ["adead.json"]

    p = subprocess.run([QUEUECTL, "--spool", sh.root, "dlq", "retry", "adead"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "adead\n", p.stderr
    (name,) = [n for n in sh.ls("pending") if n.endswith("_adead.json")]
    assert os.lstat(sh.path("pending", name)).st_uid == sh.uid(sh.alice)  # still alice's: her worker runs it
    sh.a.run("config", "set", "max-retries", "0", check=0)
    assert burst(sh.a).returncode == 0
    assert sh.a.json("show", "adead")["attempts"] == 1 and "adead.json" in sh.ls("dead")


def test_a_file_planted_in_dead_is_not_revived_as_the_owners(shared):
    """Hole 4: alice's routine `dlq retry --all` must not make bob's planted file hers."""
    sh = shared
    planted = {"id": "evil", "command": f"id -un > {sh.mark('evil')}", "state": "dead", "attempts": 1, "max_retries": 0,
               "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "token": "x", "history": []}
    sh.b.shell(f"printf '%s' '{json.dumps(planted)}' > {sh.path('dead', 'evil.json')}")
    p = sh.a.run("dlq", "retry", "--all")
    assert p.returncode == 0 and p.stdout == ""
    assert f"skipped 1 dead job(s) of user {sh.bob}" in p.stderr
    assert sh.ls("dead") == ["evil.json"] and os.lstat(sh.path("dead", "evil.json")).st_uid == sh.uid(sh.bob)
    assert burst(sh.a).returncode == 0 and ran_as(sh, "evil") is None


# -- 4. recovery and adoption check owners ----------------------------------------------------------


def dead_holder():
    """A worker id of this host whose process is gone."""
    p = subprocess.Popen(["true"])
    p.wait()
    return L.worker_name(procs.hostname(), p.pid, 12345, procs.namespace())


def test_a_claim_planted_under_a_dead_holder_is_put_back_unchanged_not_run(shared):
    """Hole 3: bob's file in processing/ under a lost worker's claim name is not rewritten as
    alice's: it goes back to pending/, still bob's, and waits for a worker that trusts bob."""
    sh = shared
    origin = L.pending_name(time.time() - 5, "planted")
    claim = L.claim_name("run", origin, dead_holder())
    body = json.dumps({"id": "planted", "command": f"id -un > {sh.mark('planted')}", "token": "t"})
    sh.b.shell(f"printf '%s' '{body}' > {sh.path('tmp', 'p')} && mv {sh.path('tmp', 'p')} {sh.path('processing', claim)}")
    p = burst(sh.a)
    assert p.returncode == 0, p.stderr
    assert sh.ls("processing") == [] and sh.ls("pending") == [origin]
    assert os.lstat(sh.path("pending", origin)).st_uid == sh.uid(sh.bob)
    assert ran_as(sh, "planted") is None and "whom this worker does not trust" in p.stderr


# -- 5. a claim is honoured only while a live worker really holds it --------------------------------


def pid1_holder():
    return L.worker_name(procs.hostname(), 1, procs.start_time(1), procs.namespace())


def short_lease(s):
    s.run("config", "set", "heartbeat-seconds", "0.5", check=0)
    s.run("config", "set", "lease-seconds", "2", check=0)


def test_a_claim_named_after_a_live_process_that_is_no_worker_is_recovered_and_burst_exits(shared):
    sh = shared
    assert procs.liveness(pid1_holder()) is True  # pid 1 is alive: the pid alone would keep the claim
    short_lease(sh.a)
    sh.a.enqueue(job(sh, "stuck", max_retries=2))
    (origin,) = sh.ls("pending")
    claim = L.claim_name("run", origin, pid1_holder())
    sh.a.shell(f"mv {sh.path('pending', origin)} {sh.path('processing', claim)}")
    t = time.monotonic()
    p = burst(sh.a, timeout=60)
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t < 30
    assert claim not in sh.ls("processing")
    shown = sh.a.json("show", "stuck")
    assert shown["state"] in ("failed", "completed") and shown["history"][0]["error"].startswith("worker lost")


def test_a_heartbeat_planted_by_a_member_does_not_protect_a_planted_claim(shared):
    """bob takes alice's waiting job into processing/ under pid 1's name and plants a heartbeat
    naming that claim: owned by bob, not by the uid pid 1 runs as, it proves nothing."""
    sh = shared
    short_lease(sh.a)
    sh.a.enqueue(job(sh, "held", max_retries=2))
    (origin,) = sh.ls("pending")
    holder = pid1_holder()
    claim = L.claim_name("run", origin, holder)
    beat = json.dumps({"id": holder, "pid": 1, "claims": [claim], "trusts": [sh.uid(sh.alice)]})
    sh.b.shell(f"mv {sh.path('pending', origin)} {sh.path('processing', claim)} && "
               f"printf '%s' '{beat}' > {sh.path('workers', L.heartbeat_name(holder))}")
    p = burst(sh.a, timeout=60)
    assert p.returncode == 0, p.stderr
    assert claim not in sh.ls("processing")
    assert sh.a.json("show", "held")["history"][0]["error"].startswith("worker lost")


def test_a_claim_planted_under_a_live_workers_id_is_recovered_without_touching_its_job(shared):
    """bob plants a claim named after alice's live worker (which does not hold it): it is lost, and
    goes back to pending/ as bob's; the job that worker runs goes on, and completes once."""
    sh = shared
    short_lease(sh.a)
    sh.a.start_workers(count=2)
    wait_until(lambda: len(sh.a.json("status", "--json")["workers"]) == 2, timeout=30)
    sh.a.enqueue(job(sh, "long", f"sleep 6; id -un > {sh.mark('long')}"))
    running = wait_until(lambda: [w for w in sh.a.json("status", "--json")["workers"] if w["job"] == "long"], timeout=30)
    origin = L.pending_name(time.time() - 5, "fake")
    claim = L.claim_name("run", origin, running[0]["id"])
    body = json.dumps({"id": "fake", "command": f"id -un > {sh.mark('fake')}", "token": "t"})
    sh.b.shell(f"printf '%s' '{body}' > {sh.path('tmp', 'f')} && mv {sh.path('tmp', 'f')} {sh.path('processing', claim)}")
    wait_until(lambda: origin in sh.ls("pending"), timeout=30)
    assert os.lstat(sh.path("pending", origin)).st_uid == sh.uid(sh.bob)
    wait_until(lambda: ran_as(sh, "long") == sh.alice, timeout=30)
    shown = sh.a.json("show", "long")
    assert shown["state"] == "completed" and shown["attempts"] == 1 and shown["history"][0]["exit_code"] == 0
    assert ran_as(sh, "fake") is None


def test_live_workers_real_claims_are_never_taken(tmp_path):
    """Several workers, many jobs, some longer than the lease: each runs exactly once."""
    s = Spool(tmp_path / "spool")
    s.run("init", check=0)
    s.run("config", "set", "heartbeat-seconds", "0.3", check=0)
    s.run("config", "set", "lease-seconds", "1", check=0)
    runs = tmp_path / "runs"
    runs.mkdir()
    lines = "\n".join(json.dumps({"id": f"j{i}", "command": f"echo x >> {runs}/j{i}; sleep {2.5 if i % 10 == 0 else 0.01}", "max_retries": 3})
                      for i in range(60))
    s.run("enqueue", "-", input=lines + "\n", check=0)
    try:
        s.start_workers(count=4)
        s.wait_counts(completed=60, timeout=120)
    finally:
        s.stop_all()
    assert sorted(os.listdir(runs)) == sorted(f"j{i}" for i in range(60))
    assert all((runs / f"j{i}").read_text() == "x\n" for i in range(60))
    assert all(not j.get("history") or j["history"][0]["error"] is None for j in s.json("list", "--json"))


# -- 6. worker stop in a shared spool ---------------------------------------------------------------


def worker_pids(sh, user):
    uid = sh.uid(user)
    return sorted(w["pid"] for w in sh.a.json("status", "--json")["workers"] if os.stat(f"/proc/{w['pid']}").st_uid == uid)


def test_worker_stop_stops_only_ones_own_workers_and_names_the_others(shared):
    sh = shared
    sh.a.start_workers(count=2)
    wait_until(lambda: len(worker_pids(sh, sh.alice)) == 2, timeout=30)
    pids = worker_pids(sh, sh.alice)

    p = sh.b.run("worker", "stop", "--timeout", "5", timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == f"queuectl: 2 worker(s) of user {sh.alice} (pids {pids[0]}, {pids[1]}) left running: only {sh.alice} or root can stop them"
    assert worker_pids(sh, sh.alice) == pids

    sh.b.start_workers()
    wait_until(lambda: len(worker_pids(sh, sh.bob)) == 1, timeout=30)
    p = sh.b.run("worker", "stop", "--timeout", "5", timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"2 worker(s) of user {sh.alice} (pids {pids[0]}, {pids[1]}) left running" in p.stderr
    assert "1 worker(s) stopped" in p.stderr
    assert worker_pids(sh, sh.bob) == [] and worker_pids(sh, sh.alice) == pids

    p = sh.a.run("worker", "stop", "--timeout", "5", timeout=60)
    assert p.returncode == 0 and "2 worker(s) stopped" in p.stderr, p.stderr
