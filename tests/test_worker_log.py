"""Issue 9: a detached pool's log is capped: past max-worker-log-bytes the process about to write
renames it to .1 (one generation kept) and starts a new one; the pool's other processes, which
share the old file, follow to the new one before their next line."""

import os

from conftest import wait_until

CAP = 4096
SLACK = 2048  # lines written by the pool's processes at once, each checking before its own line


def logs(spool):
    return {n: os.path.getsize(spool.path(n)) for n in os.listdir(spool.root) if n.startswith("worker.")}


def test_a_pool_whose_log_passes_the_cap_leaves_two_files_of_bounded_size(spool):
    spool.run("config", "set", "max-worker-log-bytes", str(CAP), check=0)
    spool.run("worker", "start", "--count", "2", "--detach", check=0)
    # each job signals its worker: one log line per job ("... ignored: a job cannot stop its worker")
    jobs = "".join('{"command": "kill -TERM $PPID"}\n' for _ in range(120))
    spool.run("enqueue", "-", input=jobs, check=0)
    spool.wait_counts(completed=120, timeout=120)
    wait_until(lambda: "worker.log.1" in logs(spool), timeout=10)
    first = logs(spool)
    spool.run("enqueue", "-", input=jobs, check=0)
    spool.wait_counts(completed=240, timeout=120)
    spool.run("worker", "stop", check=0)
    sizes = logs(spool)
    assert set(sizes) == {"worker.log", "worker.log.1"}, sizes
    assert all(size <= CAP + SLACK for size in sizes.values()), sizes
    assert sizes["worker.log.1"] >= CAP  # rotated because it had reached the cap
    text = ""
    for name in ("worker.log.1", "worker.log"):
        with open(spool.path(name)) as f:
            text += f.read()
    # the processes followed the rotations: the last lines are in the files kept. (Not every line
    # is: a process that looked at the log just before another rotated it writes its line into
    # NAME.1, which a rotation after that drops. A capped log keeps the latest lines, not all.)
    assert 1 <= len([line for line in text.splitlines() if ": stopped: " in line]) <= 2, text
    assert "workers stopped: 240 completed" in text.splitlines()[-1], text
    assert first != sizes  # rotated again since: the second batch was logged too


def test_the_cap_is_a_setting_with_a_floor(spool):
    p = spool.run("config", "set", "max-worker-log-bytes", "100")
    assert p.returncode == 2 and "max-worker-log-bytes must be a whole number >= 4096" in p.stderr
