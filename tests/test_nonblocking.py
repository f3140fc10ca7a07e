"""Issue 9: reading a spool file never blocks. A FIFO put over config.json (or over a log, a
heartbeat, the pause file) is refused at once with one line naming it; workers and `enqueue` go
on with the defaults."""

import os
import time

from conftest import wait_until
from test_faults import pool_log, start_pool, stop_pool

IGNORED = "not a settings file: ignored, the defaults apply"


def test_a_fifo_over_config_json_hangs_neither_workers_nor_enqueue(spool, tmp_path):
    spool.run("config", "set", "max-retries", "7", check=0)
    pool = start_pool(spool, tmp_path, count=2)
    spool.enqueue({"id": "before", "command": "true"})
    spool.wait_counts(completed=1)
    config = spool.path("config.json")
    os.unlink(config)
    os.mkfifo(config)

    start = time.monotonic()
    p = spool.run("enqueue", '{"id": "after", "command": "true"}', timeout=10)
    assert time.monotonic() - start < 10 and p.returncode == 0 and p.stdout.strip() == "after", p.stderr
    (line,) = p.stderr.splitlines()
    assert config in line and "FIFO" in line and IGNORED in line and "owned by user 'root'" in line, line
    spool.wait_counts(completed=2, timeout=20)
    assert spool.show("after")["max_retries"] == 3  # the default: the FIFO is not read
    for i in range(3):  # the workers keep running jobs
        spool.run("enqueue", f'{{"id": "more{i}", "command": "true"}}', check=0, timeout=10)
    spool.wait_counts(completed=5, timeout=20)
    assert spool.run("config", "get", "max-retries", check=0, timeout=10).stdout.strip() == "3"

    wait_until(lambda: IGNORED in pool_log(pool), timeout=10)
    log = stop_pool(pool)
    said = [line for line in log.splitlines() if IGNORED in line]
    assert 1 <= len(said) <= 2, log  # once per worker, however often it looks
    # `config set` replaces it with a regular file again
    spool.run("config", "set", "max-retries", "4", check=0, timeout=10)
    assert open(config).read().count('"max-retries": 4') == 1


def test_fifos_over_a_log_a_heartbeat_and_the_pause_file_are_refused_at_once(spool):
    spool.enqueue({"id": "x", "command": "echo hi"})
    spool.run("worker", "start", "--burst", check=0)
    log = spool.path("logs", "x.1.log")
    os.unlink(log)
    os.mkfifo(log)
    p = spool.run("logs", "x", timeout=10)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and log in p.stderr and "FIFO" in p.stderr, p.stderr
    os.mkfifo(spool.path("workers", "h.1.2.n00000000.json"))
    os.mkfifo(spool.path("paused"))
    status = spool.json("status", "--json")
    assert status["paused"] is not None and status["counts"]["completed"] == 1
    os.mkfifo(spool.path("ids", "taken"))
    p = spool.run("enqueue", '{"id": "taken", "command": "true"}', timeout=10)
    assert p.returncode == 1 and "already exists" in p.stderr
