"""Issue 8, "exactly once per attempt under every fault", through the installed CLI and real workers:
what enqueue accepts runs; a file that is not a valid job is rejected with its reason and never
crashes a worker; a job near max-job-bytes keeps all its attempts; a command that could never start
is refused up front; settings out of range are refused, and stored ones never crash a worker.

Every wait is a condition with a deadline (wait_until). test_validation.py has the unit tests.
"""

import json
import os
import shlex
import signal

from test_cli import burst, failed, snapshot

q = shlex.quote
STRLEN = 131072  # Linux's MAX_ARG_STRLEN


def compact(doc):
    return json.dumps(doc, separators=(",", ":"))


def padded(size, **fields):
    """A compact job document of exactly SIZE bytes (a `pad` field makes up the length)."""
    doc = dict(fields, pad="")
    doc["pad"] = "p" * (size - len(compact(doc)))
    text = compact(doc)
    assert len(text) == size
    return text


def reason_of(spool, name):
    with open(spool.path("rejected", name + ".reason")) as f:
        return f.read()


def read_final(spool, folder, job_id):
    with open(spool.path(folder, job_id + ".json"), "rb") as f:
        return json.loads(f.read())


# -- 1. numbers a worker could not read back --------------------------------------------------


def test_enqueue_refuses_non_finite_numbers_anywhere_and_a_drop_in_is_rejected(spool, tmp_path):
    for text in (
        '{"command": "true", "x": 1e400}',
        '{"command": "true", "meta": {"n": [1, -1e999]}}',
        '{"command": "true", "timeout": 1E+309}',
    ):
        line = failed(spool.run("enqueue", text), 2)
        assert "out of range" in line, line
    p = spool.run("enqueue", "-", input='{"command": "true"}\n{"command": "true", "x": 1e400}\n')
    assert p.returncode == 2 and len(p.stdout.split()) == 1 and "line 2" in p.stderr and "out of range" in p.stderr
    assert spool.counts()["pending"] == 1  # the good line only

    # the same bytes dropped in: rejected with the reason, never run
    side = tmp_path / "ran"
    spool.drop_in("inf.json", f'{{"command": "touch {side}", "x": 1e400}}')
    spool.start_workers()
    spool.wait_counts(rejected=1, pending=0, processing=0, completed=1)
    assert "out of range" in reason_of(spool, "inf.json")
    assert not side.exists()


# -- 2. queuectl's own fields with the wrong type ---------------------------------------------

BAD_FIELDS = {
    "previous_runs": [1],
    "history": ["x"],
    "attempts": "2",
    "state": 5,
    "created_at": 7,
    "exit_code": "a",
    "last_error": 3,
}


def test_a_job_file_with_queuectl_fields_of_the_wrong_type_is_rejected_and_the_worker_lives(spool, tmp_path):
    pool = spool.start_workers()
    wpid = spool.live_workers()[0]["pid"]
    ran = tmp_path / "ran"
    ran.mkdir()
    names = []
    for field, value in BAD_FIELDS.items():
        job_id = f"bad-{field.replace('_', '-')}"
        # as a job queuectl would have accepted (canonical name, token): the claim path
        name = f"20261128T120000.000000Z_{job_id}.json"
        doc = {"id": job_id, "command": f"touch {ran / job_id}", "token": "0123456789abcdef", field: value}
        spool.drop_in(name, compact(doc))
        names.append((name, field))
    # and as a plain drop-in, where adoption used to keep the field
    spool.drop_in("plain.json", compact({"command": f"touch {ran / 'plain'}", "previous_runs": [1]}))
    names.append(("plain.json", "previous_runs"))

    spool.wait_counts(rejected=len(names), pending=0, processing=0, timeout=20)
    for name, field in names:
        reason = reason_of(spool, name)
        assert field in reason and reason.count("\n") == 1, (name, reason)
    assert os.listdir(ran) == []  # none of them ran

    spool.enqueue({"id": "good-after", "command": f"touch {ran / 'good'}"})
    spool.wait_counts(completed=1, pending=0, processing=0)
    assert os.listdir(ran) == ["good"]
    assert [w["pid"] for w in spool.live_workers()] == [wpid] and pool.poll() is None
    pool.send_signal(signal.SIGTERM)
    _, err = pool.communicate(timeout=20)
    assert pool.returncode == 0 and "Traceback" not in err, err


# -- 3. a job near max-job-bytes keeps every attempt ------------------------------------------


def test_a_job_just_under_max_job_bytes_fails_every_attempt_into_dead_never_rejected(spool, tmp_path):
    limit = 1024
    spool.run("config", "set", "max-job-bytes", str(limit), check=0)
    spool.run("config", "set", "backoff-max", "0", check=0)
    cmd = "echo attempt $QUEUECTL_ATTEMPT; exit 3"
    text = padded(limit - 3, id="near-limit", command=cmd, max_retries=3)
    assert spool.run("enqueue", text, check=0).stdout == "near-limit\n"
    spool.drop_in("dropped.json", padded(limit - 3, id="dropped", command=cmd, max_retries=3))
    # more attempts than the history keeps, and rounds of `dlq retry` on top
    spool.enqueue(padded(limit - 3, id="many", command=cmd, max_retries=14))
    spool.enqueue(padded(limit - 3, id="rounds", command=cmd, max_retries=0))
    burst(spool)  # every retry is due at once (backoff-max 0): one run takes them all to dead/
    assert spool.counts() == {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "dead": 4, "held": 0, "rejected": 0}

    for job_id in ("near-limit", "dropped"):
        job = read_final(spool, "dead", job_id)
        assert job["attempts"] == 4 and [e["attempt"] for e in job["history"]] == [1, 2, 3, 4]
        assert all(e["exit_code"] == 3 for e in job["history"])
        assert os.path.getsize(spool.path("dead", job_id + ".json")) > limit  # larger than its writer could submit

    job = read_final(spool, "dead", "many")
    assert job["attempts"] == 15
    assert [e["attempt"] for e in job["history"]] == [1] + list(range(7, 16))  # the first and the latest
    for n in range(1, 16):
        with open(spool.path("logs", f"many.{n}.log")) as f:
            assert f.read() == f"attempt {n}\n"  # one log per attempt, none overwritten

    for round_ in range(2, 9):
        assert spool.run("dlq", "retry", "rounds", check=0).stdout == "rounds\n"
        burst(spool)
        assert spool.counts()["dead"] == 4 and spool.counts()["rejected"] == 0, round_
    job = spool.show("rounds")
    assert job["state"] == "dead" and len(job["previous_runs"]) <= 5
    assert sum(r["attempts"] for r in job["previous_runs"]) + job["attempts"] == 8
    assert spool.run("logs", "rounds", check=0).stdout == "attempt 1\n"
    assert sorted(spool.ls("logs")) == sorted([f"many.{n}.log" for n in range(1, 16)] + [f"{i}.{n}.log" for i in ("near-limit", "dropped") for n in range(1, 5)] + [f"rounds.{n}.log" for n in range(1, 9)])


# -- 4. commands that can never start ---------------------------------------------------------


def test_commands_too_big_to_exec_are_refused_at_enqueue_and_rejected_as_drop_ins(spool, tmp_path):
    spool.run("config", "set", "max-job-bytes", str(8 << 20), check=0)
    before = snapshot(spool)
    lines = [
        compact({"id": "long-command", "command": "x" * STRLEN}),
        compact({"id": "long-env", "command": "true", "env": {"BIG": "v" * STRLEN}}),
        compact({"id": "huge-env", "command": "true", "env": {f"V{i}": "v" * 100000 for i in range(70)}}),
    ]
    p = spool.run("enqueue", "-", input="\n".join(lines) + "\n")
    assert (p.returncode, p.stdout) == (2, "")
    errors = p.stderr.splitlines()
    assert len(errors) == 3, p.stderr
    assert "line 1: command is 131072 bytes" in errors[0] and "MAX_ARG_STRLEN" in errors[0]
    assert "line 2: env['BIG']" in errors[1] and "MAX_ARG_STRLEN" in errors[1]
    assert "line 3: command and env need" in errors[2] and "ARG_MAX" in errors[2]
    assert snapshot(spool) == before

    ran = tmp_path / "ran"
    ran.mkdir()

    def touching(tag, size):
        cmd = f"touch {q(str(ran / tag))}; : "
        return cmd + "x" * (size - len(cmd.encode()))

    spool.drop_in("too-long.json", compact({"command": touching("too-long", STRLEN), "max_retries": 0}))
    spool.drop_in("longest.json", compact({"command": touching("longest", STRLEN - 1), "max_retries": 0}))
    spool.drop_in("env-too-long.json", compact({"command": touching("env", 20), "env": {"B": "v" * (STRLEN - 2)}, "max_retries": 0}))
    spool.start_workers()
    spool.wait_counts(rejected=2, completed=1, pending=0, processing=0)
    assert sorted(os.listdir(ran)) == ["longest"]
    assert "command is 131072 bytes" in reason_of(spool, "too-long.json")
    assert "env['B']" in reason_of(spool, "env-too-long.json")
    assert spool.counts()["dead"] == 0


# -- 5. settings ------------------------------------------------------------------------------


def test_config_set_refuses_values_out_of_range_and_heartbeats_too_slow_for_the_lease(spool):
    spool.run("config", "set", "max-retries", "4", check=0)
    before = snapshot(spool)
    line = failed(spool.run("config", "set", "heartbeat-seconds", "10000000000"), 2)
    assert "heartbeat-seconds must be a number of seconds > 0 and <= 28800" in line
    for key, value in (("max-retries", "1000001"), ("backoff-base", "1001"), ("lease-seconds", "1e6"), ("max-job-bytes", "10"), ("job-timeout", "1e10")):
        line = failed(spool.run("config", "set", key, value), 2)
        assert key in line and "<=" in line, line
    line = failed(spool.run("config", "set", "heartbeat-seconds", "11"), 2)
    assert "heartbeat-seconds 11" in line and "lease-seconds 30" in line and "10 or less" in line
    line = failed(spool.run("config", "set", "lease-seconds", "12"), 2)
    assert "lease-seconds 12" in line and "heartbeat-seconds 5" in line and "15 or more" in line
    assert snapshot(spool) == before
    spool.run("config", "set", "lease-seconds", "60", check=0)
    spool.run("config", "set", "heartbeat-seconds", "20", check=0)
    failed(spool.run("config", "set", "lease-seconds", "59"), 2)
    assert spool.run("config", "get", "heartbeat-seconds", check=0).stdout == "20\n"


def test_stored_settings_out_of_range_keep_their_defaults_and_workers_run(spool):
    with open(spool.path("config.json"), "w") as f:
        f.write('{"heartbeat-seconds": 1e10, "lease-seconds": 1e12, "backoff-max": 1e400, "job-timeout": -1, "max-job-bytes": 1e30, "max-retries": 0}\n')
    values = spool.json("config", "list", "--json")
    assert (values["heartbeat-seconds"], values["lease-seconds"], values["backoff-max"], values["job-timeout"], values["max-job-bytes"]) == (5, 30, 3600, 0, 1048576)
    assert values["max-retries"] == 0
    spool.enqueue({"id": "ok", "command": "echo fine"})
    spool.enqueue({"id": "bad", "command": "exit 1"})
    p = burst(spool)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert spool.counts() == {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "dead": 1, "held": 0, "rejected": 0}


def test_workers_run_with_every_setting_at_either_end_of_its_range(spool):
    ends = {
        "high": [("lease-seconds", "86400"), ("heartbeat-seconds", "28800"), ("max-retries", "1000000"), ("backoff-base", "1000"),
                 ("backoff-max", "315360000"), ("job-timeout", "315360000"), ("max-job-bytes", "268435456"), ("max-log-bytes", "1099511627776")],
        "low": [("heartbeat-seconds", "0.05"), ("lease-seconds", "0.15"), ("max-retries", "0"), ("backoff-base", "1"),
                ("backoff-max", "0"), ("job-timeout", "0"), ("max-job-bytes", "256"), ("max-log-bytes", "0")],
    }
    for end, pairs in ends.items():
        for key, value in pairs:
            spool.run("config", "set", key, value, check=0)
        spool.enqueue({"id": f"ok-{end}", "command": "echo fine"})
        spool.enqueue({"id": f"bad-{end}", "command": "echo no; exit 1"})
        p = burst(spool)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (end, p.stderr)
        assert spool.run("logs", f"ok-{end}", check=0).stdout == "fine\n"
    # high: the failure waits for its retry (1000 s); low: no retries, so it is dead at once
    assert spool.counts() == {"pending": 0, "processing": 0, "completed": 2, "failed": 1, "dead": 1, "held": 0, "rejected": 0}
