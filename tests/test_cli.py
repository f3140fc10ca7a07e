"""The CLI contract of issue 2 ("Commands", "Precise points"): the installed `queuectl` in real
subprocesses against a temporary spool.

Jobs reach done/ and dead/ through `queuectl worker start --burst` (no long-lived workers here).
Every wait is a condition with a deadline (wait_until).
"""

import json
import os
import re
import stat
import subprocess
import time
from datetime import datetime, timezone

import pytest

from conftest import QUEUECTL, Spool, wait_until
from spoolnames import WORKER

ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
PENDING_RE = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)_(.+)\.json\Z")
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
WORKER_RE = re.compile(WORKER + r"\Z")  # a worker id, as spool_layout.md gives it
FOLDERS = ["dead", "done", "held", "ids", "logs", "pending", "processing", "rejected", "requests", "tmp", "workers"]
STATES = ["pending", "processing", "completed", "failed", "dead", "held", "rejected"]


# -- helpers ----------------------------------------------------------------------------------


def err_line(p):
    """The single error line a failed command wrote on stderr (asserting there is exactly one)."""
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("\n"), f"want one stderr line, got {p.stderr!r}"
    assert p.stderr.startswith("queuectl"), p.stderr
    return p.stderr.rstrip("\n")


def failed(p, code):
    """P exited CODE with nothing on stdout and one line on stderr; returns that line."""
    assert p.returncode == code, f"exit {p.returncode}, wanted {code}: {p.stdout!r} {p.stderr!r}"
    assert p.stdout == "", p.stdout
    return err_line(p)


def snapshot(spool):
    """Every file under the spool (relative path -> bytes), to prove that nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(spool.root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):  # an id's reservation: its target is the token
                out[os.path.relpath(path, spool.root)] = ("symlink", os.readlink(path))
                continue
            with open(path, "rb") as f:
                out[os.path.relpath(path, spool.root)] = f.read()
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), spool.root) + "/"] = None
    return out


def run_many(arg_lists, env, inputs=None, width=6):
    """Run `queuectl ARGS` for each ARGS, WIDTH at a time; returns CompletedProcess-like results in order."""
    results = [None] * len(arg_lists)
    inputs = inputs or [None] * len(arg_lists)
    for start in range(0, len(arg_lists), width):
        procs = []
        for i in range(start, min(start + width, len(arg_lists))):
            p = subprocess.Popen(
                [QUEUECTL, *arg_lists[i]],
                stdin=subprocess.PIPE if inputs[i] is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append((i, p))
        for i, p in procs:
            out, err = p.communicate(inputs[i], timeout=60)
            results[i] = subprocess.CompletedProcess(arg_lists[i], p.returncode, out, err)
    return results


def read_job(spool, folder, name):
    with open(spool.path(folder, name), "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def pending_file(spool, job_id):
    names = [n for n in spool.ls("pending") if n.endswith(f"_{job_id}.json")]
    assert len(names) == 1, spool.ls("pending")
    return names[0]


def burst(spool):
    """Run the due jobs with `worker start --burst`; its stdout is empty (a summary goes to stderr)."""
    p = spool.run("worker", "start", "--burst", check=0)
    assert p.stdout == ""
    return p


def iso_ts(text):
    assert ISO_Z.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def stamp_ts(text):
    return datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def env_without_spool(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUECTL_SPOOL", "XDG_DATA_HOME")}
    env.update(extra)
    return env


# -- enqueue ----------------------------------------------------------------------------------


def test_enqueue_prints_the_id_alone_and_stores_the_job(spool):
    before = time.time()
    p = spool.run("enqueue", '{"id": "job-1", "command": "echo hi"}', check=0)
    after = time.time()
    assert p.stdout == "job-1\n"
    assert p.stderr == ""
    [name] = spool.ls("pending")
    m = PENDING_RE.match(name)
    assert m and m.group(2) == "job-1"
    assert before - 1e-6 <= stamp_ts(m.group(1)) <= after  # due at its enqueue time
    assert spool.ls("tmp") == [] and spool.ls("ids") == ["job-1"]
    job = read_job(spool, "pending", name)
    assert job["id"] == "job-1" and job["command"] == "echo hi"
    assert (job["state"], job["attempts"], job["max_retries"]) == ("pending", 0, 3)
    assert job["created_at"] == job["updated_at"]
    assert stamp_ts(m.group(1)) == pytest.approx(iso_ts(job["created_at"]), abs=1e-6)
    assert spool.counts()["pending"] == 1


def test_enqueue_generates_distinct_valid_ids(spool):
    a = spool.run("enqueue", '{"command": "true"}', check=0)
    b = spool.run("enqueue", '{"command": "true"}', check=0)
    ids = [a.stdout, b.stdout]
    for out in ids:
        assert out.endswith("\n") and out.count("\n") == 1
        assert ID_RE.match(out.strip()), out
    assert ids[0] != ids[1]
    assert sorted(PENDING_RE.match(n).group(2) for n in spool.ls("pending")) == sorted(i.strip() for i in ids)
    assert spool.ls("ids") == sorted(i.strip() for i in ids)


def test_duplicate_id_is_refused_in_every_state_and_nothing_changes(spool):
    spool.run("config", "set", "max-retries", "0", check=0)
    spool.enqueue({"id": "ok", "command": "true"})
    spool.enqueue({"id": "bad", "command": "exit 1"})
    burst(spool)
    spool.enqueue({"id": "wait", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    assert (spool.ls("done"), spool.ls("dead"), len(spool.ls("pending"))) == (["ok.json"], ["bad.json"], 1)
    before = snapshot(spool)
    for job_id in ("ok", "bad", "wait"):  # completed, dead, pending
        p = spool.run("enqueue", json.dumps({"id": job_id, "command": "echo other"}))
        line = failed(p, 1)
        assert job_id in line and "exists" in line
    assert snapshot(spool) == before


BAD_JOBS = [
    ("{bad", "JSON"),
    ('{"command": "true"} {"command": "true"}', "JSON"),
    ('{"command": "true", "timeout": NaN}', "NaN"),
    ("", "JSON"),
    ("[1]", "object"),
    ('"x"', "object"),
    ('{"id": "x"}', "command"),
    ('{"command": ""}', "command"),
    ('{"command": "   "}', "command"),
    ('{"command": 5}', "command"),
    ('{"command": null}', "command"),
    ('{"command": "true", "id": ".hidden"}', "id"),
    ('{"command": "true", "id": "a/b"}', "id"),
    ('{"command": "true", "id": ".."}', "id"),
    ('{"command": "true", "id": ""}', "id"),
    ('{"command": "true", "id": 5}', "id"),
    ('{"command": "true", "id": "%s"}' % ("x" * 129), "id"),
    ('{"command": "true", "max_retries": -1}', "max_retries"),
    ('{"command": "true", "max_retries": 1.5}', "max_retries"),
    ('{"command": "true", "max_retries": "3"}', "max_retries"),
    ('{"command": "true", "max_retries": true}', "max_retries"),
    ('{"command": "true", "timeout": 0}', "timeout"),
    ('{"command": "true", "timeout": "5"}', "timeout"),
    ('{"command": "true", "priority": 1.5}', "priority"),
    ('{"command": "true", "priority": "high"}', "priority"),
    ('{"command": "true", "run_at": 5}', "run_at"),
    ('{"command": "true", "run_at": "tomorrow"}', "run_at"),
    ('{"command": "true", "run_at": "2026-13-01T00:00:00"}', "run_at"),
    ('{"command": "true", "cwd": 5}', "cwd"),
    ('{"command": "true", "cwd": ""}', "cwd"),
    ('{"command": "true", "env": ["A=1"]}', "env"),
    ('{"command": "true", "env": {"A": 1}}', "env"),
    ('{"command": "true", "env": "A=1"}', "env"),
    ('{"command": "echo \\ud800"}', "surrogate"),
    ('{"command": "echo \udcff"}', "surrogate"),  # a non-UTF-8 byte in the argument
]


def test_enqueue_bad_input_exits_2_with_one_line_and_stores_nothing(spool):
    before = snapshot(spool)
    results = run_many([["enqueue", text] for text, _ in BAD_JOBS], spool.env)
    problems = []
    for (text, word), p in zip(BAD_JOBS, results):
        try:
            line = failed(p, 2)
            assert word in line, f"{line!r} does not name {word!r}"
        except AssertionError as e:
            problems.append(f"enqueue {text!r}: {e}")
    assert not problems, "\n".join(problems)
    assert snapshot(spool) == before  # nothing in pending/, tmp/ or ids/


def test_enqueue_refuses_a_job_over_max_job_bytes(spool):
    # a worker rejects a file over max-job-bytes: enqueue must not acknowledge one
    spool.run("config", "set", "max-job-bytes", "400", check=0)
    before = snapshot(spool)
    line = failed(spool.run("enqueue", json.dumps({"id": "big", "command": "echo " + "x" * 400})), 2)
    assert "max-job-bytes" in line
    p = spool.run("enqueue", "-", input=json.dumps({"id": "big2", "command": "echo " + "x" * 400}) + "\n")
    assert (p.returncode, p.stdout) == (2, "") and "line 1" in p.stderr and "max-job-bytes" in p.stderr
    assert snapshot(spool) == before
    spool.enqueue({"id": "small", "command": "true"})
    burst(spool)
    assert spool.counts()["completed"] == 1 and spool.ls("rejected") == []


def test_enqueue_keeps_unknown_fields(spool):
    extra = {"owner": {"team": "ops", "oncall": ["a", "b"]}, "x-trace": None, "n": 1.5}
    spool.enqueue(dict({"id": "u", "command": "true"}, **extra))
    job = read_job(spool, "pending", pending_file(spool, "u"))
    assert {k: job[k] for k in extra} == extra
    burst(spool)
    shown = spool.show("u")
    assert shown["state"] == "completed"
    assert {k: shown[k] for k in extra} == extra
    assert {k: read_job(spool, "done", "u.json")[k] for k in extra} == extra


def test_max_retries_is_filled_from_the_setting_at_enqueue(spool):
    spool.run("config", "set", "max-retries", "7", check=0)
    spool.enqueue({"id": "a", "command": "true"})
    spool.enqueue({"id": "zero", "command": "true", "max_retries": 0})
    spool.run("config", "set", "max-retries", "1", check=0)
    spool.enqueue({"id": "b", "command": "true"})
    got = {i: read_job(spool, "pending", pending_file(spool, i))["max_retries"] for i in ("a", "zero", "b")}
    assert got == {"a": 7, "zero": 0, "b": 1}
    assert spool.show("a")["max_retries"] == 7


RUN_AT_CASES = [  # (TZ of the enqueue process, run_at, the UTC time it means)
    ("QQQ-3", "2030-06-01T12:00:00", "2030-06-01T09:00:00"),  # POSIX TZ: QQQ-3 is UTC+3
    ("QQQ+5", "2030-06-01T12:00:00.25", "2030-06-01T17:00:00.25"),
    ("QQQ+5", "2030-06-01T12:00:00+02:00", "2030-06-01T10:00:00"),  # an offset wins over local time
    ("QQQ-3", "2030-06-01T12:00:00Z", "2030-06-01T12:00:00"),
]


def test_run_at_without_offset_is_local_time(spool):
    procs = [
        subprocess.Popen(
            [QUEUECTL, "enqueue", json.dumps({"id": f"t{i}", "command": "true", "run_at": run_at})],
            env=dict(spool.env, TZ=tz),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (tz, run_at, _) in enumerate(RUN_AT_CASES)
    ]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out) == (0, f"t{i}\n"), err
    for i, (_, _, utc) in enumerate(RUN_AT_CASES):
        stamp, frac = (utc.split(".") + ["0"])[:2]
        frac = frac.ljust(6, "0")
        name = pending_file(spool, f"t{i}")
        assert name == f"{stamp.replace('-', '').replace(':', '')}.{frac}Z_t{i}.json"
        assert read_job(spool, "pending", name)["run_at"] == f"{stamp}.{frac}Z"


def test_run_at_in_the_past_is_due_at_once_ordered_by_that_time(spool, tmp_path):
    order = tmp_path / "order"
    cmd = f"echo $JOB >> {order}"
    spool.enqueue({"id": "now", "command": cmd, "env": {"JOB": "now"}})
    spool.enqueue({"id": "jan2", "command": cmd, "env": {"JOB": "jan2"}, "run_at": "2020-01-02T00:00:00Z"})
    spool.enqueue({"id": "jan1", "command": cmd, "env": {"JOB": "jan1"}, "run_at": "2020-01-01T00:00:00+00:00"})
    names = spool.ls("pending")
    assert names[:2] == ["20200101T000000.000000Z_jan1.json", "20200102T000000.000000Z_jan2.json"]
    assert names[2].endswith("_now.json")
    assert spool.counts()["pending"] == 3
    burst(spool)
    assert order.read_text() == "jan1\njan2\nnow\n"
    assert spool.counts()["completed"] == 3


# -- enqueue - (JSON Lines) -------------------------------------------------------------------


def test_enqueue_lines_reports_bad_lines_and_stores_good_ones(spool):
    lines = "\n".join(
        [
            '{"id": "l1", "command": "true"}',
            "",
            "{oops",
            '{"command": "true"}',
            '{"command": ""}',
            '{"id": "l6", "command": "true", "priority": 2}',
        ]
    ) + "\n"
    p = spool.run("enqueue", "-", input=lines)
    assert p.returncode == 2
    out = p.stdout.splitlines()
    assert len(out) == 3 and p.stdout.endswith("\n")
    assert out[0] == "l1" and out[2] == "l6" and ID_RE.match(out[1])
    errs = p.stderr.splitlines()
    assert len(errs) == 2, p.stderr
    assert "line 3" in errs[0] and "JSON" in errs[0]
    assert "line 5" in errs[1] and "command" in errs[1]
    assert sorted(PENDING_RE.match(n).group(2) for n in spool.ls("pending")) == sorted(out)
    assert spool.ls("tmp") == []


def test_enqueue_lines_all_good_and_duplicates(spool):
    p = spool.run("enqueue", "-", input='{"id": "a", "command": "true"}\n{"id": "b", "command": "true"}\n{"id": "c", "command": "true"}')
    assert (p.returncode, p.stdout, p.stderr) == (0, "a\nb\nc\n", "")
    # a duplicate line (of an earlier job, or of a line in the same input) is an operational error
    p = spool.run("enqueue", "-", input='{"id": "d", "command": "true"}\n{"id": "a", "command": "x"}\n{"id": "d", "command": "x"}\n')
    assert p.returncode == 1
    assert p.stdout == "d\n"
    errs = p.stderr.splitlines()
    assert len(errs) == 2 and "line 2" in errs[0] and "'a'" in errs[0] and "line 3" in errs[1] and "'d'" in errs[1]
    assert sorted(PENDING_RE.match(n).group(2) for n in spool.ls("pending")) == ["a", "b", "c", "d"]
    assert read_job(spool, "pending", pending_file(spool, "a"))["command"] == "true"
    assert spool.ls("tmp") == []
    p = spool.run("enqueue", "-", input="")
    assert (p.returncode, p.stdout) == (0, "")


def _blocked_reading_stdin(pid):
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "pipe_read" in f.read()
    except OSError:
        return True  # no /proc: no barrier, the race still happens (less tightly)


def test_racing_enqueues_of_one_id_have_exactly_one_winner(spool):
    """20 processes get the same id at the same moment: a barrier holds each one in its read of
    stdin (`enqueue -`) until all have started, so that their reservations really race."""
    n = 20
    procs = [
        subprocess.Popen([QUEUECTL, "enqueue", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=spool.env)
        for _ in range(n)
    ]
    deadline = time.monotonic() + 20
    while not all(_blocked_reading_stdin(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    for i, p in enumerate(procs):
        p.stdin.write(json.dumps({"id": "race", "command": f"echo {i}"}) + "\n")
    for p in procs:
        p.stdin.close()  # all of them go at once
    results = []
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        results.append((p.wait(timeout=60), out, err))
    winners = [i for i, (rc, out, err) in enumerate(results) if rc == 0]
    assert len(winners) == 1, results
    assert results[winners[0]][1:] == ("race\n", "")
    for i, (rc, out, err) in enumerate(results):
        if i != winners[0]:
            assert (rc, out) == (1, ""), (rc, out, err)
            assert err.count("\n") == 1 and "line 1" in err and "'race'" in err and "exists" in err
    [name] = spool.ls("pending")
    assert read_job(spool, "pending", name)["command"] == f"echo {winners[0]}"
    assert spool.ls("ids") == ["race"] and spool.ls("tmp") == []


# -- spool location -----------------------------------------------------------------------------


def _assert_spool(root):
    assert sorted(os.listdir(root)) == sorted(FOLDERS + ["config.json.lock"])  # the lock: made by the owner
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for d in FOLDERS:
        assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(os.path.join(root, "config.json.lock")).st_mode) == 0o600


def test_spool_option_before_the_subcommand_wins_over_the_environment(spool, tmp_path):
    other = str(tmp_path / "deep" / "other")
    p = subprocess.run([QUEUECTL, "--spool", other, "init"], env=spool.env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, other + "\n"), p.stderr
    _assert_spool(other)  # init makes the missing parents too
    p = subprocess.run([QUEUECTL, "--spool", other, "enqueue", '{"id": "x", "command": "true"}'], env=spool.env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "x\n"), p.stderr
    assert spool.ls("pending") == [] and spool.ls("ids") == []
    assert os.listdir(os.path.join(other, "ids")) == ["x"]
    p = subprocess.run([QUEUECTL, "--spool", other, "status", "--json"], env=spool.env, capture_output=True, text=True)
    assert json.loads(p.stdout)["counts"]["pending"] == 1


def test_spool_from_queuectl_spool_variable(tmp_path):
    root = str(tmp_path / "from-env")
    env = env_without_spool(QUEUECTL_SPOOL=root, XDG_DATA_HOME=str(tmp_path / "xdg"))
    p = subprocess.run([QUEUECTL, "init"], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, root + "\n"), p.stderr
    p = subprocess.run([QUEUECTL, "enqueue", '{"id": "e", "command": "true"}'], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "e\n"), p.stderr
    _assert_spool(root)
    assert os.listdir(os.path.join(root, "ids")) == ["e"]
    assert not os.path.exists(tmp_path / "xdg")


MISSING_SPOOL_COMMANDS = [
    ("enqueue", '{"command": "true"}'),
    ("status",),
    ("list",),
    ("show", "x"),
    ("logs", "x"),
    ("worker", "start", "--burst"),
    ("worker", "stop"),
    ("dlq", "list"),
    ("dlq", "retry", "--all"),
    ("config", "set", "max-retries", "5"),
    ("config", "get", "max-retries"),
    ("config", "list"),
    ("pause",),
    ("resume",),
]


@pytest.mark.parametrize("how", ["option", "variable"])
def test_a_missing_explicit_spool_is_refused_not_created(tmp_path, how):
    """A mistyped --spool or $QUEUECTL_SPOOL, or a disk not mounted, must not become a new empty
    spool (and the jobs go nowhere anyone looks): every command but init refuses it."""
    root = str(tmp_path / "mnt" / "typo")
    env = env_without_spool(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    if how == "variable":
        env["QUEUECTL_SPOOL"] = root
    for args in MISSING_SPOOL_COMMANDS:
        argv = [QUEUECTL, *(["--spool", root] if how == "option" else []), *args]
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert (p.returncode, p.stdout, p.stderr) == (1, "", f"queuectl: no spool at {root}; create it with queuectl init\n"), args
    assert not os.path.exists(tmp_path / "mnt")
    assert not os.path.exists(tmp_path / "xdg") and not os.path.exists(tmp_path / "home")
    p = subprocess.run([QUEUECTL, *(["--spool", root] if how == "option" else []), "init"], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, root + "\n"), p.stderr
    _assert_spool(root)
    p = subprocess.run([QUEUECTL, *(["--spool", root] if how == "option" else []), "enqueue", '{"id": "j", "command": "true"}'], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "j\n"), p.stderr


def test_an_existing_spool_with_missing_folders_is_completed(tmp_path):
    """An older or half-made spool (its root is there) still gets its missing folders."""
    root = tmp_path / "half"
    (root / "pending").mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    env = env_without_spool(QUEUECTL_SPOOL=str(root))
    p = subprocess.run([QUEUECTL, "enqueue", '{"id": "h", "command": "true"}'], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "h\n"), p.stderr
    _assert_spool(str(root))


def test_spool_defaults_to_xdg_data_home_then_home(tmp_path):
    xdg = tmp_path / "xdg"
    env = env_without_spool(XDG_DATA_HOME=str(xdg), HOME=str(tmp_path / "home"))
    p = subprocess.run([QUEUECTL, "enqueue", '{"id": "x", "command": "true"}'], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "x\n"), p.stderr
    _assert_spool(str(xdg / "queuectl"))
    assert not os.path.exists(tmp_path / "home")
    env = env_without_spool(HOME=str(tmp_path / "home"))
    p = subprocess.run([QUEUECTL, "status", "--json"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    _assert_spool(str(tmp_path / "home" / ".local" / "share" / "queuectl"))


def test_init_creates_the_folders_and_is_idempotent(tmp_path):
    root = str(tmp_path / "s")
    env = env_without_spool()
    for _ in range(2):
        p = subprocess.run([QUEUECTL, "--spool", root, "init"], env=env, capture_output=True, text=True)
        assert (p.returncode, p.stdout, p.stderr) == (0, root + "\n", "")
        _assert_spool(root)


# -- status -------------------------------------------------------------------------------------


def test_status_json_of_an_empty_spool(spool):
    p = spool.run("status", "--json", check=0)
    assert p.stderr == ""
    assert json.loads(p.stdout) == {"counts": {s: 0 for s in STATES}, "workers": [], "paused": None, "untrusted": []}


def test_status_list_show_logs_while_a_job_runs(spool, tmp_path):
    go = tmp_path / "go"
    spool.enqueue({"id": "hold", "command": f"echo started; while [ ! -e {go} ]; do sleep 0.02; done; echo released"})
    p = subprocess.Popen([QUEUECTL, "worker", "start", "--burst"], env=spool.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spool.procs.append(p)
    try:
        wait_until(lambda: any("_hold@" in n for n in spool.ls("processing")), timeout=20)
        data = spool.json("status", "--json")
        assert set(data) == {"counts", "workers", "paused", "untrusted"} and data["paused"] is None
        assert data["counts"] == {"pending": 0, "processing": 1, "completed": 0, "failed": 0, "dead": 0, "held": 0, "rejected": 0}
        [w] = data["workers"]
        assert set(w) == {"id", "pid", "host", "job"}
        assert WORKER_RE.match(w["id"]) and type(w["pid"]) is int and isinstance(w["host"], str)
        assert w["id"].startswith(f"{w['host']}.{w['pid']}.")
        assert w["job"] == "hold"
        assert [j["id"] for j in spool.json("list", "--state", "processing", "--json")] == ["hold"]
        assert [j["state"] for j in spool.json("list", "--json")] == ["processing"]
        assert spool.show("hold")["state"] == "processing"
        log = spool.path("logs", "hold.1.log")
        wait_until(lambda: os.path.exists(log) and open(log).read() == "started\n", timeout=10)
        assert spool.run("logs", "hold", check=0).stdout == "started\n"
    finally:
        go.write_text("")
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (0, "")
    assert spool.json("status", "--json") == {"counts": dict({s: 0 for s in STATES}, completed=1), "workers": [], "paused": None, "untrusted": []}
    assert spool.run("logs", "hold", check=0).stdout == "started\nreleased\n"


# -- a spool with one job in every state, shared by the read-only tests below -----------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    s = Spool(tmp_path_factory.mktemp("populated") / "spool")
    s.run("init", check=0)
    s.run("config", "set", "backoff-base", "1000", check=0)  # the failed job waits 1000 s: it stays failed
    s.enqueue({"id": "p-pending", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    s.enqueue({"id": "c-completed", "command": "echo done-out"})
    s.enqueue({"id": "d-dead", "command": "echo to-out; echo to-err >&2; exit 3", "max_retries": 0})
    s.enqueue({"id": "f-failed", "command": "exit 4", "max_retries": 2})
    s.enqueue({"id": "x-processing", "command": "true", "run_at": "2099-01-02T00:00:00Z"})
    s.drop_in("junk.json", b"not json at all")
    burst(s)
    # a claim by a worker of another host: only read by the CLI in these tests
    name = pending_file(s, "x-processing")
    os.rename(s.path("pending", name), s.path("processing", name[:-5] + "@elsewhere.4242.1.json"))
    return s


ORDER = ["p-pending", "c-completed", "d-dead", "f-failed", "x-processing"]  # enqueue order


def test_status_json_counts_every_state(populated):
    p = populated.run("status", "--json", check=0)
    assert p.stderr == ""
    assert json.loads(p.stdout) == {"counts": dict({s: 1 for s in STATES}, held=0), "workers": [], "paused": None, "untrusted": []}
    assert populated.ls("rejected") == ["junk.json", "junk.json.reason"]  # the reason file is not counted


def test_list_by_state(populated):
    states = ["pending", "completed", "dead", "failed", "processing"]
    args = [["list", "--state", s, "--json"] for s in states] + [["list", "--state", s] for s in states]
    results = run_many(args, populated.env)
    for state, job_id, p, t in zip(states, ORDER, results[:5], results[5:]):
        assert (p.returncode, p.stderr) == (0, "")
        items = json.loads(p.stdout)
        assert [(j["id"], j["state"]) for j in items] == [(job_id, state)]
        for field in ("id", "command", "state", "attempts", "max_retries", "created_at", "updated_at"):
            assert field in items[0]
        text = t.stdout.splitlines()
        assert len(text) == 1 and job_id in text[0] and state in text[0]


def test_list_rejected(populated):
    items = populated.json("list", "--state", "rejected", "--json")
    assert len(items) == 1
    assert (items[0]["name"], items[0]["state"]) == ("junk.json", "rejected")
    assert "JSON" in items[0]["reason"]


def test_list_all_oldest_first_and_limit(populated):
    items = populated.json("list", "--json")
    assert [j["id"] for j in items] == ORDER
    assert [j["state"] for j in items] == ["pending", "completed", "dead", "failed", "processing"]
    assert [j["id"] for j in populated.json("list", "--json", "--limit", "2")] == ORDER[:2]
    assert populated.json("list", "--json", "--limit", "0") == []
    assert [j["id"] for j in populated.json("list", "--state", "dead", "--json", "--limit", "5")] == ["d-dead"]
    assert len(populated.run("list", check=0).stdout.splitlines()) == 5


def test_list_unknown_state_and_bad_limit(populated):
    for args in (["list", "--state", "bogus"], ["list", "--state", "Completed"], ["list", "--limit", "-1"]):
        p = populated.run(*args)
        line = failed(p, 2)
        assert args[-1] in line


def test_show_history(populated):
    p = populated.run("show", "d-dead", check=0)
    assert p.stderr == ""
    job = json.loads(p.stdout)
    assert (job["id"], job["state"], job["attempts"], job["max_retries"], job["exit_code"]) == ("d-dead", "dead", 1, 0, 3)
    assert "3" in job["last_error"]
    [h] = job["history"]
    for field in ("attempt", "started_at", "finished_at", "exit_code", "error", "worker"):
        assert field in h, field
    assert (h["attempt"], h["exit_code"]) == (1, 3)
    assert h["error"] == job["last_error"]
    assert WORKER_RE.match(h["worker"])
    assert iso_ts(job["created_at"]) <= iso_ts(h["started_at"]) <= iso_ts(h["finished_at"]) == iso_ts(job["updated_at"])

    ok = populated.show("c-completed")
    assert (ok["state"], ok["attempts"], ok["exit_code"], ok["last_error"]) == ("completed", 1, 0, None)
    assert [(h["attempt"], h["exit_code"], h["error"]) for h in ok["history"]] == [(1, 0, None)]

    waiting = populated.show("f-failed")
    assert (waiting["state"], waiting["attempts"], waiting["exit_code"]) == ("failed", 1, 4)
    assert [(h["attempt"], h["exit_code"]) for h in waiting["history"]] == [(1, 4)]

    fresh = populated.show("p-pending")
    assert (fresh["state"], fresh["attempts"], fresh["history"]) == ("pending", 0, [])
    assert fresh["run_at"] == "2099-01-01T00:00:00.000000Z"


def test_show_and_logs_of_unknown_ids_exit_1(populated):
    cases = [["show", i] for i in ("nope", "../ids/d-dead", "d-dead.json", ".d-dead")] + [["logs", "nope"], ["logs", "../x"]]
    for args, p in zip(cases, run_many(cases, populated.env)):
        line = failed(p, 1)
        assert args[1] in line


def test_logs_of_a_finished_job(populated):
    p = populated.run("logs", "d-dead", check=0)
    assert (p.stdout, p.stderr) == ("to-out\nto-err\n", "")
    assert populated.run("logs", "c-completed", check=0).stdout == "done-out\n"
    p = populated.run("logs", "p-pending", check=0)  # never ran: nothing to print, not an error
    assert p.stdout == ""


def test_dlq_list(populated):
    items = populated.json("dlq", "list", "--json")
    assert [(j["id"], j["state"]) for j in items] == [("d-dead", "dead")]
    text = populated.run("dlq", "list", check=0).stdout.splitlines()
    assert len(text) == 1 and "d-dead" in text[0]


def test_dlq_list_limit_shows_the_oldest_dead_jobs(spool):
    for i in range(3):
        spool.enqueue({"id": f"dead-{i}", "command": "exit 1", "max_retries": 0})
    burst(spool)
    assert [j["id"] for j in spool.json("dlq", "list", "--json")] == ["dead-0", "dead-1", "dead-2"]
    assert [j["id"] for j in spool.json("dlq", "list", "--limit", "2", "--json")] == ["dead-0", "dead-1"]
    text = spool.run("dlq", "list", "--limit", "1", check=0).stdout.splitlines()
    assert len(text) == 1 and "dead-0" in text[0]
    assert spool.run("dlq", "list", "--limit", "0", check=0).stdout == ""
    p = spool.run("dlq", "list", "--limit", "-1", check=2)
    assert p.stdout == "" and "--limit" in p.stderr


# -- logs ---------------------------------------------------------------------------------------


def test_logs_interleave_stdout_and_stderr_of_the_latest_attempt(spool, tmp_path):
    counter = tmp_path / "n"
    spool.run("config", "set", "backoff-max", "0", check=0)  # retries are due at once
    spool.enqueue({"id": "mix", "command": "echo o1; echo e1 >&2; echo o2; printf 'e2' >&2; printf 'o3'"})
    spool.enqueue(
        {
            "id": "again",
            "command": f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo attempt $n; echo err $n >&2; exit 1",
            "max_retries": 2,
        }
    )
    burst(spool)
    p = spool.run("logs", "mix", check=0)
    assert (p.stdout, p.stderr) == ("o1\ne1\no2\ne2o3", "")
    assert spool.show("again")["attempts"] == 3
    assert spool.run("logs", "again", check=0).stdout == "attempt 3\nerr 3\n"
    assert [n for n in spool.ls("logs") if n.startswith("again.")] == ["again.1.log", "again.2.log", "again.3.log"]


# -- dlq retry ----------------------------------------------------------------------------------


def _dead_jobs(spool, *ids):
    spool.run("config", "set", "max-retries", "0", check=0)
    for i, job_id in enumerate(ids):
        spool.enqueue({"id": job_id, "command": f"echo run of {job_id}; exit {3 + i}"})
    burst(spool)
    assert spool.ls("dead") == sorted(f"{i}.json" for i in ids)


def test_dlq_retry_some_ids_with_errors(spool):
    _dead_jobs(spool, "d1", "d2")
    spool.enqueue({"id": "live", "command": "true"})
    burst(spool)
    spool.enqueue({"id": "later", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    old = spool.show("d1")
    p = spool.run("dlq", "retry", "d1", "nope", "live", "d2", "later", "../d1")
    assert p.returncode == 1
    assert p.stdout == "d1\nd2\n"
    errs = p.stderr.splitlines()
    assert len(errs) == 4, p.stderr
    for word, line in zip(["nope", "live", "later", "../d1"], errs):
        assert word in line
    assert "completed" in errs[1] and "pending" in errs[2]
    assert spool.ls("dead") == [] and spool.ls("processing") == []
    for job_id, code in (("d1", 3), ("d2", 4)):
        job = read_job(spool, "pending", pending_file(spool, job_id))
        assert (job["state"], job["attempts"], job["history"], job["exit_code"], job["last_error"]) == ("pending", 0, [], None, None)
        [prev] = job["previous_runs"]
        assert prev["attempts"] == 1
        iso_ts(prev["retried_at"])
        assert [(h["attempt"], h["exit_code"]) for h in prev["history"]] == [(1, code)]
    assert spool.show("d1")["previous_runs"][0]["history"] == old["history"]
    assert spool.counts() == {"pending": 3, "processing": 0, "completed": 1, "failed": 0, "dead": 0, "held": 0, "rejected": 0}
    # it runs again: a fresh history, the log numbering goes on, the earlier round is kept
    burst(spool)
    job = spool.show("d1")
    assert (job["state"], job["attempts"], len(job["previous_runs"])) == ("dead", 1, 1)
    assert [h["log"] for h in job["history"]] == ["d1.2.log"]
    assert spool.run("logs", "d1", check=0).stdout == "run of d1\n"


def test_dlq_retry_needs_ids_or_all(spool):
    _dead_jobs(spool, "d1")
    before = snapshot(spool)
    line = failed(spool.run("dlq", "retry"), 2)
    assert "--all" in line
    assert snapshot(spool) == before
    p = spool.run("dlq", "retry", "nope")
    failed(p, 1)
    assert snapshot(spool) == before


def test_dlq_retry_all(spool):
    _dead_jobs(spool, "d1", "d2", "d3")
    p = spool.run("dlq", "retry", "--all", check=0)
    assert (p.stdout, p.stderr) == ("d1\nd2\nd3\n", "")
    assert spool.ls("dead") == []
    assert sorted(PENDING_RE.match(n).group(2) for n in spool.ls("pending")) == ["d1", "d2", "d3"]
    assert all(j["attempts"] == 0 and j["state"] == "pending" for j in spool.json("list", "--json"))
    p = spool.run("dlq", "retry", "--all", check=0)  # nothing dead: nothing to do
    assert (p.stdout, p.stderr) == ("", "")


# -- config -------------------------------------------------------------------------------------

DEFAULTS = {
    "max-retries": 3,
    "backoff-base": 2,
    "backoff-max": 3600,
    "job-timeout": 0,
    "lease-seconds": 30,
    "heartbeat-seconds": 5,
}


def test_config_set_get_list(spool):
    values = spool.json("config", "list", "--json")
    assert {k: values[k] for k in DEFAULTS} == DEFAULTS
    assert spool.run("config", "get", "max-retries", check=0).stdout == "3\n"
    p = spool.run("config", "set", "max-retries", "5", check=0)
    assert (p.stdout, p.stderr) == ("", "")
    p = spool.run("config", "set", "backoff-base", "1.5", check=0)
    p = spool.run("config", "get", "max-retries", check=0)
    assert (p.stdout, p.stderr) == ("5\n", "")
    assert spool.run("config", "get", "backoff-base", check=0).stdout == "1.5\n"
    assert spool.json("config", "list", "--json") == dict(values, **{"max-retries": 5, "backoff-base": 1.5})
    with open(spool.path("config.json")) as f:
        assert json.load(f) == {"max-retries": 5, "backoff-base": 1.5}
    text = spool.run("config", "list", check=0).stdout.splitlines()
    assert len(text) == len(values)
    assert [line.split()[:2] for line in text[:2]] == [["max-retries", "5"], ["backoff-base", "1.5"]]


def test_config_unknown_key_exits_2_naming_the_valid_keys(spool):
    spool.run("config", "set", "max-retries", "4", check=0)
    before = snapshot(spool)
    for args in (["config", "set", "max_retries", "1"], ["config", "get", "nope"], ["config", "set", "", "1"]):
        line = failed(spool.run(*args), 2)
        for key in DEFAULTS:
            assert key in line, (args, line)
    assert snapshot(spool) == before


BAD_VALUES = [
    ("max-retries", "-1", "whole number"),
    ("max-retries", "1.5", "whole number"),
    ("max-retries", "many", "whole number"),
    ("backoff-base", "0.5", ">= 1"),
    ("backoff-max", "-1", ">= 0"),
    ("job-timeout", "nan", ">= 0"),
    ("lease-seconds", "0", "> 0"),
    ("heartbeat-seconds", "", "> 0"),
]


def test_config_invalid_value_exits_2_naming_the_type(spool):
    spool.run("config", "set", "max-retries", "4", check=0)
    before = snapshot(spool)
    problems = []
    for (key, value, expected), p in zip(BAD_VALUES, run_many([["config", "set", k, v] for k, v, _ in BAD_VALUES], spool.env)):
        try:
            line = failed(p, 2)
            assert key in line and expected in line, line
        except AssertionError as e:
            problems.append(f"config set {key} {value!r}: {e}")
    assert not problems, "\n".join(problems)
    assert snapshot(spool) == before
    assert spool.run("config", "get", "max-retries", check=0).stdout == "4\n"


# -- help and output ------------------------------------------------------------------------------


def _command_paths():
    import click

    from queuectl.cli import cli

    out = []

    def walk(cmd, path):
        out.append(path)
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, path + [name])

    walk(cli, [])
    return out


def test_every_command_and_group_has_help_with_a_summary_and_an_example(populated):
    spool = populated
    paths = _command_paths()
    for expected in (["enqueue"], ["worker", "start"], ["worker", "stop"], ["status"], ["list"], ["show"], ["logs"], ["dlq", "list"], ["dlq", "retry"], ["config", "set"], ["config", "get"], ["config", "list"], ["init"]):
        assert expected in paths
    problems = []
    for path, p in zip(paths, run_many([path + ["--help"] for path in paths], spool.env)):
        name = " ".join(["queuectl"] + path)
        lines = p.stdout.splitlines()
        if (p.returncode, p.stderr) != (0, "") or not lines or not lines[0].startswith(f"Usage: {name} "):
            problems.append(f"{name} --help: exit {p.returncode}, {p.stderr!r}")
            continue
        if len(lines) < 3 or lines[1] != "" or not lines[2].strip():
            problems.append(f"{name} --help: no one-line summary under the usage line")
        words = " ".join(path)
        examples = [
            line for line in map(str.strip, lines) if line.startswith("queuectl ") and (not path or re.search(r"(^| )" + re.escape(words) + r"( |$)", line[9:]))
        ]
        if "Example" not in p.stdout or not examples:
            problems.append(f"{name} --help: no example of `{name} ...`")
    assert not problems, "\n".join(problems)


def test_a_bare_group_prints_its_help_on_stderr(populated):
    spool = populated
    for args in (["dlq"], ["config"], ["worker"]):
        p = spool.run(*args)
        assert (p.returncode, p.stdout) == (2, "")
        assert p.stderr.startswith(f"Usage: queuectl {args[0]} ")


def test_worker_stop_without_workers_says_so_on_stderr(populated):
    spool = populated
    p = spool.run("worker", "stop", check=0)
    assert p.stdout == ""
    assert err_line(p) and "no worker" in p.stderr


def test_burst_summary_goes_to_stderr_and_stdout_stays_empty(spool):
    spool.run("config", "set", "max-retries", "0", check=0)
    spool.enqueue({"id": "ok", "command": "echo to-the-log"})
    spool.enqueue({"id": "bad", "command": "exit 1"})
    p = burst(spool)
    assert p.returncode == 0
    summary = p.stderr.strip().splitlines()[-1]
    assert "1 completed" in summary and "1 dead" in summary
