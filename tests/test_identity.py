"""A worker's identity and its liveness test (issue 8, "Identity that breaks").

A pid means something only in its PID namespace, the host name is no identity, and a process that
/proc hides or that belongs to another user is not dead. Each test runs real workers in the
situation that broke them: a second PID namespace (`unshare --pid`), a renamed host
(`unshare --uts`), another Unix user under a /proc mounted with hidepid=2 (`unshare --mount`).

These need root (namespaces, useradd, setpriv); CI runs as root. A test that cannot set up its
situation fails and says why: it never skips.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone

import pytest

from conftest import QUEUECTL, Spool, wait_until
from spoolnames import parse_claim

LEASE = 2.0
HEARTBEAT = 0.2
WATCH = max(3 * HEARTBEAT, LEASE + 1.0)  # how long a live holder must keep its claim: 3 heartbeats, and past a lease


# -- the situation, or a loud failure -------------------------------------------------------------


def need_root(what):
    if os.geteuid() != 0:
        pytest.fail(f"this test needs root to {what} (CI runs as root); it is not skipped: run the suite as root", pytrace=False)


def need_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"this test needs {', '.join(missing)} (util-linux, passwd) on PATH; install them", pytrace=False)


def need_to_work(argv, what):
    """Run ARGV once to prove the kernel lets us do WHAT here; fail loudly with its error if not."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.fail(f"cannot {what} here ({' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}); this test needs it", pytrace=False)


def configure(spool, **values):
    # the heartbeat first: config set refuses a lease shorter than three heartbeats
    for key, value in sorted(values.items(), key=lambda kv: kv[0] != "heartbeat_seconds"):
        spool.run("config", "set", key.replace("_", "-"), str(value), check=0)


# -- processes, seen from this (the initial) PID namespace -----------------------------------------


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def running(pid):
    """Is PID (in this namespace) a running process, not a zombie?"""
    data = _read(f"/proc/{pid}/stat")
    return data is not None and data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def pid_ns(pid="self"):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes(env_has=None, env_lacks=None, cmd_has=None):
    """Pids of running processes whose environment holds ENV_HAS (and not ENV_LACKS), and whose
    command line holds CMD_HAS."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or not running(p):
            continue
        env = b"\0" + (_read(f"/proc/{p}/environ") or b"") + b"\0"
        cmd = _read(f"/proc/{p}/cmdline") or b""
        if env_has is not None and b"\0" + env_has.encode() + b"\0" not in env:
            continue
        if env_lacks is not None and b"\0" + env_lacks.encode() in env:
            continue
        if cmd_has is not None and cmd_has.encode() not in cmd:
            continue
        out.append(int(p))
    return out


def job_processes(claim_name):
    """The running processes of the job under CLAIM_NAME (every job sees QUEUECTL_CLAIM)."""
    return processes(env_has=f"QUEUECTL_CLAIM={claim_name}")


def worker_processes(spool):
    """Supervisors and workers of SPOOL (they run `queuectl worker start` with QUEUECTL_SPOOL; jobs
    have QUEUECTL_CLAIM)."""
    return processes(env_has=f"QUEUECTL_SPOOL={spool.root}", env_lacks="QUEUECTL_CLAIM=", cmd_has="worker\0start")


def kill_hard(pids):
    """SIGKILL PIDS, stopping them all first: a supervisor must not see its worker die and replace it."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def the_claim(spool, job_id):
    names = [n for n in spool.ls("processing") if (parse_claim(n) or (None, None))[1] == job_id]
    return names[0] if len(names) == 1 else None


def heartbeat_ids(spool):
    return [n[: -len(".json")] for n in spool.ls("workers") if n.endswith(".json") and not n.startswith(".")]


def heartbeat_pid(spool, wid):
    with open(spool.path("workers", wid + ".json")) as f:
        return json.load(f)["pid"]


def parse_iso(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def holds_for(spool, job_id, claim, jobs, seconds):
    """Assert during SECONDS that CLAIM still holds JOB_ID and its processes JOBS still run."""
    end = time.monotonic() + seconds
    while True:
        assert the_claim(spool, job_id) == claim, (
            f"the claim of a live worker was taken over: processing/ now {spool.ls('processing')}; job: {spool.show(job_id)}"
        )
        assert all(running(p) for p in jobs), f"the job of a live worker was killed (pids {jobs})"
        if time.monotonic() > end:
            return
        time.sleep(0.05)


def long_job(spool, job_id):
    """A job that runs until killed; one attempt only, so that its recovery leaves it dead (no retry)."""
    return spool.enqueue({"id": job_id, "command": "exec sleep 300", "max_retries": 0})


def claimed_and_running(spool, job_id, timeout=20):
    claim = wait_until(lambda: the_claim(spool, job_id), timeout=timeout, message=f"{job_id} was never claimed")
    jobs = wait_until(lambda: job_processes(claim), timeout=timeout, message=f"the process of {job_id} never showed")
    return claim, jobs


def lost_attempt(spool, job_id, timeout):
    """Wait until JOB_ID's one attempt was recovered as lost (the job is then dead); that attempt."""

    def dead():
        job = spool.show(job_id)
        return job if job["state"] == "dead" else None

    job = wait_until(dead, timeout=timeout, message=f"{job_id} was never recovered: {spool.show(job_id)}")
    (attempt,) = job["history"]
    assert attempt["error"].startswith("worker lost"), attempt
    return attempt


# -- the identity itself ------------------------------------------------------------------------------


PYTHON = os.path.join(os.path.dirname(QUEUECTL), "python")
SHOW_ID = "from queuectl import procs; w = procs.split_worker_id(procs.worker_id()); print(w.host, w.ns)"


def identity_in(*unshare, hostname=None):
    """(host, NS) of a worker id made under `unshare UNSHARE`, after renaming the host to HOSTNAME."""
    rename = f"hostname {hostname} && " if hostname else ""
    p = subprocess.run(["unshare", *unshare, "sh", "-c", rename + 'exec "$0" -c "$1"', PYTHON, SHOW_ID], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return tuple(p.stdout.split())


def test_the_namespace_field_follows_the_pid_namespace_not_the_host_name():
    need_root("create PID and UTS namespaces")
    need_tools("unshare", "hostname")
    need_to_work(["unshare", "--pid", "--fork", "--mount-proc", "true"], "create a PID namespace")
    host, ns = identity_in("--uts")
    assert identity_in("--uts", hostname="qc-other-name") == ("qc-other-name", ns)  # renamed: the same namespace
    inner_host, inner_ns = identity_in("--pid", "--fork", "--mount-proc")
    assert inner_host == host and inner_ns != ns  # a container with the same host name: another namespace


# -- 1. two PID namespaces, one host name -----------------------------------------------------------


def test_a_live_worker_in_another_pid_namespace_keeps_its_job_until_its_lease_runs_out(spool):
    """A container's worker (its own PID namespace, the same host name): a worker outside must
    neither recover its job nor kill it while it heartbeats; once it is killed, its job is
    recovered when its heartbeat is older than lease-seconds, and the job's orphan is killed."""
    need_root("create a PID namespace")
    need_tools("unshare")
    need_to_work(["unshare", "--pid", "--fork", "--mount-proc", "true"], "create a PID namespace")
    configure(spool, lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT)
    long_job(spool, "boxed")
    # pid 1 of the namespace is a `sleep` that outlives the worker (so that killing the worker does
    # not end the namespace and the job with it); --kill-child ends it all when the test is done
    inner = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", f'"{QUEUECTL}" worker start & exec sleep 600'],
        env=spool.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        claim, jobs = claimed_and_running(spool, "boxed")
        inner_workers = [p for p in worker_processes(spool) if pid_ns(p) != pid_ns()]
        assert inner_workers, "the namespaced worker is not visible from here"
        (inner_wid,) = heartbeat_ids(spool)

        spool.start_workers()  # outside the namespace, same host name, same spool
        wait_until(lambda: len(heartbeat_ids(spool)) == 2, timeout=20, message="the outside worker never registered")
        holds_for(spool, "boxed", claim, jobs, WATCH)

        kill_hard(inner_workers)  # the namespaced worker is gone; its job runs on, orphaned
        assert all(running(p) for p in jobs)
        last_beat = os.stat(spool.path("workers", inner_wid + ".json")).st_mtime
        attempt = lost_attempt(spool, "boxed", timeout=LEASE + 15)
        assert attempt["worker"] == inner_wid
        assert parse_iso(attempt["finished_at"]) - last_beat > LEASE - 0.01, "recovered before its lease ran out"
        wait_until(lambda: not any(running(p) for p in jobs), timeout=10, message=f"the orphaned job {jobs} was not killed")
    finally:
        inner.kill()
        inner.wait()


# -- 2. a host renamed while its workers run -------------------------------------------------------


def test_worker_stop_finds_the_workers_of_a_renamed_host(spool):
    """`worker stop` from a host whose name changed since the workers started: it finds them, and
    says whose they are and their pids."""
    need_root("rename the host in a UTS namespace")
    need_tools("unshare", "hostname")
    need_to_work(["unshare", "--uts", "hostname", "qc-probe"], "rename the host in a UTS namespace")
    pool = spool.start_workers(count=2)
    pids = sorted(heartbeat_pid(spool, w) for w in heartbeat_ids(spool))
    new_name = f"qc-renamed-{uuid.uuid4().hex[:8]}"
    p = subprocess.run(
        ["unshare", "--uts", "sh", "-c", f'hostname {new_name} && exec "{QUEUECTL}" worker stop'],
        env=spool.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "2 worker(s) stopped" in p.stderr, p.stderr
    assert "root" in p.stderr and all(str(pid) in p.stderr for pid in pids), f"it must say whose workers and which pids: {p.stderr}"
    assert pool.wait(timeout=20) == 0


def test_a_renamed_hosts_lost_worker_is_recovered_at_once_and_its_orphan_killed(spool):
    """A worker started under another host name dies: a worker of the same PID namespace sees by
    its pid that it is gone (no need to wait for the lease), recovers its job and kills its orphan."""
    need_root("rename the host in a UTS namespace")
    need_tools("unshare", "hostname")
    need_to_work(["unshare", "--uts", "hostname", "qc-probe"], "rename the host in a UTS namespace")
    configure(spool, heartbeat_seconds=HEARTBEAT)  # lease-seconds stays 30: the pid must decide
    long_job(spool, "renamed")
    jobs = []
    old = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", f'hostname qc-old-{uuid.uuid4().hex[:8]} && exec "{QUEUECTL}" worker start'],
        env=spool.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        claim, jobs = claimed_and_running(spool, "renamed")
        (old_wid,) = heartbeat_ids(spool)
        kill_hard([old.pid, heartbeat_pid(spool, old_wid)])  # the supervisor, then its worker
        old.wait()

        t0 = time.time()
        spool.start_workers()  # the host as named now
        attempt = lost_attempt(spool, "renamed", timeout=10)
        assert attempt["worker"] == old_wid and parse_iso(attempt["finished_at"]) - t0 < 10
        wait_until(lambda: not any(running(p) for p in jobs), timeout=10, message=f"the orphaned job {jobs} was not killed")
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
        kill_hard(jobs)


# -- 3. another user, and /proc mounted with hidepid=2 -----------------------------------------------


@pytest.fixture
def other_user():
    """A Unix user and group made for this test (unique names), removed afterwards."""
    need_root("create a user")
    need_tools("useradd", "userdel", "groupadd", "groupdel", "setpriv")
    name = f"qc{uuid.uuid4().hex[:10]}"
    p = subprocess.run(["groupadd", name], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"cannot create a group (groupadd {name}: {p.stderr.strip()})", pytrace=False)
    try:
        p = subprocess.run(["useradd", "--no-create-home", "--gid", name, "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"cannot create a user (useradd {name}: {p.stderr.strip()})", pytrace=False)
        try:
            yield name
        finally:
            p = subprocess.run(["userdel", name], capture_output=True, text=True)
            assert p.returncode == 0, f"could not remove the test's user {name}: {p.stderr.strip()}"
    finally:
        if _group_exists(name):  # userdel removes a user's group of the same name (USERGROUPS_ENAB)
            p = subprocess.run(["groupdel", name], capture_output=True, text=True)
            assert p.returncode == 0, f"could not remove the test's group {name}: {p.stderr.strip()}"


def _group_exists(name):
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


_AS_USER = {}


def as_user(user, argv, env):
    """ARGV run as USER (its own group only). The interpreter may live where only root may look
    (say /root/.pyenv, mode 0700): then the process keeps one capability, CAP_DAC_READ_SEARCH, to
    read it. That capability lets it read any file (so these tests do not prove the spool's read
    permissions; tests/test_security.py is about those), but it reaches none of what is tested
    here: signals (CAP_KILL), what /proc shows under hidepid (CAP_SYS_PTRACE), writes (CAP_DAC_OVERRIDE)."""
    if user not in _AS_USER:
        base = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        if subprocess.run(base + [QUEUECTL, "--help"], env=env, capture_output=True).returncode != 0:
            base += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
            probe = subprocess.run(base + [QUEUECTL, "--help"], env=env, capture_output=True, text=True)
            if probe.returncode != 0:
                pytest.fail(f"cannot run queuectl as user {user}: {probe.stderr.strip()}", pytrace=False)
        _AS_USER[user] = base
    return _AS_USER[user] + argv


@pytest.fixture
def shared_spool(other_user):
    """A spool shared by root and OTHER_USER through their group (`init --group`), outside pytest's
    private tmp folder."""
    parent = tempfile.mkdtemp(prefix="qc-ident-", dir="/tmp")
    os.chmod(parent, 0o755)
    s = Spool(os.path.join(parent, "spool"))
    s.env["HOME"] = parent
    try:
        s.run("init", "--group", other_user, check=0)
        configure(s, trusted_users=f"root,{other_user}", lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT)
        yield s, other_user
    finally:
        kill_hard(processes(env_has=f"QUEUECTL_SPOOL={s.root}", cmd_has="sleep"))  # jobs first: a graceful stop waits for them
        s.stop_all()
        for pid in processes(env_has=f"QUEUECTL_SPOOL={s.root}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(parent, ignore_errors=True)


def hidden_proc(argv):
    """ARGV run with a /proc of its own mounted hidepid=2 (systemd's ProtectProc=invisible): a user
    sees only its own processes there."""
    return ["unshare", "--mount", "sh", "-c", 'mount -t proc -o hidepid=2 proc /proc && exec "$@"', "sh"] + argv


def need_hidepid():
    need_tools("unshare", "mount")
    need_to_work(["unshare", "--mount", "sh", "-c", "mount -t proc -o hidepid=2 proc /proc"], "mount a private /proc with hidepid=2")


def root_worker_with_a_job(spool, user, job_id):
    """A root worker running a long job, hidden from USER by hidepid=2: (pool, wid, pid, claim, job pids)."""
    long_job(spool, job_id)
    pool = spool.start_workers()
    claim, jobs = claimed_and_running(spool, job_id)
    (wid,) = heartbeat_ids(spool)
    pid = heartbeat_pid(spool, wid)
    blind = subprocess.run(
        hidden_proc(as_user(user, ["sh", "-c", f"test -e /proc/{pid} && echo visible || echo hidden"], spool.env)),
        env=spool.env,
        capture_output=True,
        text=True,
    )
    assert blind.stdout.strip() == "hidden", f"the set-up must hide root's worker from {user}: {blind.stdout} {blind.stderr}"
    return pool, wid, pid, claim, jobs


def test_a_worker_of_another_user_hidden_by_hidepid_is_not_taken_for_dead(shared_spool):
    """A worker that cannot see another user's worker in /proc (hidepid=2) must not take it for
    dead: the pid exists (kill(pid, 0) says EPERM), so the lease decides. Once that worker is
    really dead, its job is recovered."""
    spool, user = shared_spool
    need_hidepid()
    root_pool, root_wid, root_worker, claim, jobs = root_worker_with_a_job(spool, user, "guarded")
    observer = subprocess.Popen(
        hidden_proc(as_user(user, [QUEUECTL, "worker", "start"], spool.env)),
        env=spool.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spool.procs.append(observer)
    wait_until(lambda: len(heartbeat_ids(spool)) == 2 or observer.poll() is not None, timeout=20)
    assert observer.poll() is None, f"the other user's worker did not start: {observer.communicate()}"
    holds_for(spool, "guarded", claim, jobs, WATCH)

    kill_hard([root_pool.pid, root_worker])
    root_pool.wait()
    attempt = lost_attempt(spool, "guarded", timeout=LEASE + 15)
    assert attempt["worker"] == root_wid
    kill_hard(jobs)  # out of the other user's reach: only its own user (or root) can end it
    observer.send_signal(signal.SIGTERM)
    _, log = observer.communicate(timeout=30)
    spool.procs.remove(observer)
    assert f"lost worker {root_wid} ran as uid 0: processes of its job, if any are left, cannot be killed" in log, log


def test_worker_stop_names_the_workers_it_may_not_stop(shared_spool):
    """`worker stop` by a user who cannot see root's worker (hidepid=2) still finds it, says whose
    it is and its pid, and fails because it may not stop it, instead of saying none run."""
    spool, user = shared_spool
    need_hidepid()
    _, _, root_worker, _, jobs = root_worker_with_a_job(spool, user, "guarded")
    stop = subprocess.run(hidden_proc(as_user(user, [QUEUECTL, "worker", "stop"], spool.env)), env=spool.env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 1 and str(root_worker) in stop.stderr and "of user root" in stop.stderr and "left running: only root can stop them" in stop.stderr, (
        f"worker stop as {user} must find root's worker and say it may not stop it: exit {stop.returncode}, {stop.stderr}"
    )
    assert running(root_worker)
    kill_hard(jobs)
