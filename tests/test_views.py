"""The read side of issue 10, end to end with the installed CLI and real workers: `wait`,
`logs -f/--attempt/--all`, and `list`'s times and filters."""

import json
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import QUEUECTL, wait_until
from queuectl import views
from queuectl.timeutil import iso, parse_iso


def burst(spool):
    p = spool.run("worker", "start", "--burst", check=0)
    assert p.stdout == ""
    return p


def gated(gate, before="", after="", code=0):
    """A command that prints BEFORE, waits until the file GATE exists, prints AFTER, exits CODE."""
    return f"printf '{before}'; while [ ! -e {gate} ]; do sleep 0.02; done; printf '{after}'; exit {code}"


def claimed(spool, job_id):
    return any(f"_{job_id}@" in n for n in spool.ls("processing"))


class Reader:
    """The stdout of a running process, gathered by a thread, to assert on while it runs."""

    def __init__(self, proc):
        self.proc, self.data = proc, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return
            self.data += chunk


def popen(spool, *args):
    return subprocess.Popen([QUEUECTL, *args], env=spool.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# -- wait ---------------------------------------------------------------------------------------


def test_wait_returns_0_within_a_second_of_the_job_completing(spool, tmp_path):
    gate = tmp_path / "go"
    spool.start_workers()
    spool.enqueue({"id": "slow", "command": gated(gate)})
    spool.enqueue({"id": "quick", "command": "true"})
    wait_until(lambda: claimed(spool, "slow"))
    p = popen(spool, "wait", "slow", "quick", "--timeout", "1d")
    # it blocks while the job runs (its safety re-check is every 2 s: a prompt return is an event)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=2.5)
    gate.touch()
    wait_until(lambda: os.path.exists(spool.path("done", "slow.json")))
    t0 = time.monotonic()
    out, err = p.communicate(timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert (p.returncode, out, err) == (0, b"", b"")


def test_wait_exits_1_naming_each_dead_or_unknown_job(spool):
    spool.enqueue({"id": "ok", "command": "true"})
    spool.enqueue({"id": "bad", "command": "exit 3", "max_retries": 0})
    burst(spool)
    p = spool.run("wait", "ok", "bad", "nope", "../x")
    assert (p.returncode, p.stdout) == (1, "")
    assert sorted(p.stderr.splitlines()) == sorted(
        ["queuectl: job bad is dead", "queuectl: no job with id 'nope'", "queuectl: no job with id '../x'"]
    )
    assert spool.run("wait", "ok", check=0).stderr == ""


def test_wait_exits_124_on_timeout(spool):
    spool.enqueue({"id": "later", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    spool.enqueue({"id": "ok", "command": "true"})
    burst(spool)
    t0 = time.monotonic()
    p = spool.run("wait", "ok", "later", "--timeout", "0.5s")
    assert 0.5 <= time.monotonic() - t0 < 5
    assert (p.returncode, p.stdout, p.stderr) == (124, "", "queuectl: timed out after 0.5 s; still waiting for: later\n")


def test_durations_take_days_and_one_parser_refuses_the_rest(spool):
    spool.enqueue({"id": "ok", "command": "true"})
    burst(spool)
    for d in ("7d", "2h", "15m", "30s", "90", "1.5d"):
        spool.run("wait", "ok", "--timeout", d, check=0)
        spool.run("list", "--since", d, "--json", check=0)
    for args in (["wait", "ok", "--timeout", "7w"], ["list", "--since", "-1d"], ["worker", "stop", "--timeout", "d"]):
        p = spool.run(*args)
        assert p.returncode == 2 and "is not a duration" in p.stderr, (args, p.stderr)


# -- logs ---------------------------------------------------------------------------------------


def test_logs_follow_prints_output_while_the_job_runs_and_exits_with_its_outcome(spool, tmp_path):
    gate = tmp_path / "go"
    spool.start_workers()
    spool.enqueue({"id": "two", "command": gated(gate, "part one\\n", "part two\\n", 5)})
    wait_until(lambda: claimed(spool, "two"))
    p = popen(spool, "logs", "-f", "two")
    r = Reader(p)
    wait_until(lambda: r.data == b"part one\n", message=f"first part not followed: {r.data!r}")
    assert p.poll() is None
    text = spool.run("logs", "two", "--all", check=0).stdout
    assert re.fullmatch(r"== attempt 1 \(running, started \S+Z\) ==\npart one\n", text), text
    gate.touch()
    assert p.wait(timeout=10) == 5
    r.thread.join(5)
    assert r.data == b"part one\npart two\n"
    assert p.stderr.read() == b""


def test_logs_follow_of_a_job_not_started_yet_follows_its_first_attempt(spool, tmp_path):
    gate = tmp_path / "go"
    spool.enqueue({"id": "ok", "command": gated(gate, "a\\n", "b\\n", 0)})
    p = popen(spool, "logs", "--follow", "ok")
    r = Reader(p)
    spool.start_workers()
    wait_until(lambda: r.data == b"a\n")
    assert p.poll() is None
    gate.touch()
    assert p.wait(timeout=10) == 0
    r.thread.join(5)
    assert r.data == b"a\nb\n"


def test_logs_follow_of_a_job_not_running_prints_the_latest_log_and_its_outcome(spool):
    spool.run("config", "set", "backoff-max", "0", check=0)
    spool.enqueue({"id": "ok", "command": "echo fine"})
    spool.enqueue({"id": "bad", "command": "echo no; exit 7", "max_retries": 1})
    spool.enqueue({"id": "timeout", "command": "echo slow; sleep 5", "timeout": 0.2, "max_retries": 0})
    burst(spool)
    results = [spool.run("logs", "-f", i) for i in ("ok", "bad", "timeout")]
    assert [(p.returncode, p.stdout) for p in results] == [
        (0, "fine\n"),
        (7, "no\n"),
        (1, "slow\n"),  # killed by its timeout: no exit code of its own
    ]
    p = spool.run("logs", "-f", "nope")
    assert (p.returncode, p.stdout, p.stderr) == (1, "", "queuectl: no job with id 'nope'\n")


def test_logs_attempt_and_all(spool, tmp_path):
    counter = tmp_path / "n"
    spool.run("config", "set", "backoff-max", "0", check=0)
    spool.enqueue(
        {
            "id": "again",
            "command": f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n = 2 ] || echo attempt $n; exit $n",
            "max_retries": 2,
        }
    )
    burst(spool)
    job = spool.show("again")
    assert [(h["attempt"], h["exit_code"], h["log"]) for h in job["history"]] == [(1, 1, "again.1.log"), (2, 2, None), (3, 3, "again.3.log")]
    assert spool.run("logs", "again", "--attempt", "1", check=0).stdout == "attempt 1\n"
    p = spool.run("logs", "again", "--attempt", "2", check=0)
    assert (p.stdout, p.stderr) == ("", "queuectl: job again: no output (attempt 2 printed nothing)\n")
    assert spool.run("logs", "again", "--attempt", "3", check=0).stdout == "attempt 3\n"
    p = spool.run("logs", "again", "--attempt", "4")
    assert (p.returncode, p.stdout, p.stderr) == (1, "", "queuectl: job 'again' has no attempt 4 (it has had 3)\n")
    started = [h["started_at"] for h in job["history"]]
    assert spool.run("logs", "again", "--all", check=0).stdout == (
        f"== attempt 1 (exit 1, started {started[0]}) ==\nattempt 1\n"
        f"== attempt 2 (exit 2, started {started[1]}) ==\n"
        f"== attempt 3 (exit 3, started {started[2]}) ==\nattempt 3\n"
    )
    # numbering goes on across dlq retry: the next round's first attempt is attempt 4
    spool.run("dlq", "retry", "again", check=0)
    burst(spool)
    assert spool.run("logs", "again", "--attempt", "4", check=0).stdout == "attempt 4\n"
    assert spool.run("logs", "again", check=0).stdout == "attempt 6\n"  # today's behaviour: the latest
    assert spool.run("logs", "again", "--all", check=0).stdout.count("== attempt ") == 6
    p = spool.run("logs", "again", "--all", "--attempt", "1")
    assert (p.returncode, p.stdout) == (2, "")


# -- list ---------------------------------------------------------------------------------------


def _rewrite(spool, folder, name, **fields):
    """Give a stored job other times (the test's stand-in for a job that ran days ago)."""
    path = spool.path(folder, name)
    with open(path) as f:
        job = json.load(f)
    job.update(fields)
    with open(path, "w") as f:
        json.dump(job, f)


def test_list_shows_times_relative_and_absolute_and_filters_with_json(spool, tmp_path):
    now = time.time()
    spool.enqueue({"id": "old-done", "command": "echo x"})
    spool.enqueue({"id": "new-dead", "command": "exit 2", "max_retries": 0})
    spool.enqueue({"id": "new-later", "command": "true", "run_at": iso(now + 2 * 3600 + 60)})
    burst(spool)
    h = spool.show("old-done")["history"][0]
    _rewrite(
        spool, "done", "old-done.json", created_at=iso(now - 3 * 86400), history=[dict(h, started_at=iso(now - 2 * 86400 - 60), finished_at=iso(now - 2 * 86400))]
    )
    gate = tmp_path / "go"
    spool.start_workers()
    spool.enqueue({"id": "new-running", "command": gated(gate)})
    wait_until(lambda: claimed(spool, "new-running"))

    items = spool.json("list", "--json")
    assert [j["id"] for j in items] == ["old-done", "new-dead", "new-later", "new-running"]
    by_id = {j["id"]: j for j in items}
    assert (by_id["old-done"]["started_at"], by_id["old-done"]["finished_at"], by_id["old-done"]["next_run_at"]) == (
        iso(now - 2 * 86400 - 60),
        iso(now - 2 * 86400),
        None,
    )
    dead = spool.show("new-dead")["history"][0]
    assert (by_id["new-dead"]["started_at"], by_id["new-dead"]["finished_at"], by_id["new-dead"]["next_run_at"]) == (dead["started_at"], dead["finished_at"], None)
    assert (by_id["new-later"]["started_at"], by_id["new-later"]["finished_at"]) == (None, None)
    assert parse_iso(by_id["new-later"]["next_run_at"]) == pytest.approx(now + 2 * 3600 + 60, abs=1e-3)
    running = by_id["new-running"]
    assert (running["state"], running["finished_at"], running["next_run_at"]) == ("processing", None, None)
    assert now - 1 < parse_iso(running["started_at"]) < time.time() + 1

    rows = {line.split()[0]: line for line in spool.run("list", check=0).stdout.splitlines()}
    assert "started 2 d ago     finished 2 d ago     next -" in rows["old-done"]
    assert "started -           finished -           next in 2 h" in rows["new-later"]
    assert re.search(r" started (now|\d s ago) +finished - +next - ", rows["new-running"]), rows["new-running"]

    def ids(*args):
        return [j["id"] for j in spool.json("list", "--json", *args)]

    assert ids("--id", "new-*") == ["new-dead", "new-later", "new-running"]
    assert ids("--id", "*-d[eo]*") == ["old-done", "new-dead"]
    assert ids("--since", "1d") == ["new-dead", "new-later", "new-running"]
    assert ids("--since", "4d") == ["old-done", "new-dead", "new-later", "new-running"]
    assert ids("--since", "1d", "--id", "*d*", "--limit", "1") == ["new-dead"]
    assert ids("--state", "completed", "--since", "1d") == []
    assert ids("--state", "completed", "--id", "old-*") == ["old-done"]
    assert [line.split()[0] for line in spool.run("list", "--id", "new-l*", check=0).stdout.splitlines()] == ["new-later"]
    gate.touch()


def test_list_rejected_filters_by_name_and_rejection_time(spool):
    spool.drop_in("junk.json", b"not json")
    burst(spool)
    assert [j["name"] for j in spool.json("list", "--state", "rejected", "--id", "ju*", "--since", "1h", "--json")] == ["junk.json"]
    assert spool.json("list", "--state", "rejected", "--id", "x*", "--json") == []


def test_relative_times_take_now():
    now = parse_iso("2026-11-28T12:00:00Z")
    cases = {
        "2026-11-28T12:00:04Z": "in 4 s",
        "2026-11-28T11:57:00Z": "3 min ago",
        "2026-11-28T12:00:00.5Z": "now",
        "2026-11-28T14:30:00Z": "in 2 h",
        "2026-11-21T12:00:00Z": "7 d ago",
        None: "-",
    }
    assert {k: views.relative(k, now) for k in cases} == cases
