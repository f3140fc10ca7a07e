"""The supervisor replaces dead workers but gives up on a crash loop; recovery's sweep of tmp/."""

import json
import subprocess
import time

from conftest import QUEUECTL


def test_workers_that_keep_crashing_at_start_are_not_replaced_for_ever(spool, tmp_path):
    broken = tmp_path / "broken"
    (broken / "watchdog").mkdir(parents=True)
    (broken / "watchdog" / "__init__.py").write_text("raise ImportError('watchdog is broken on purpose')\n")
    env = dict(spool.env, PYTHONPATH=str(broken))
    p = subprocess.run([QUEUECTL, "worker", "start", "--count", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "workers keep dying at start, not replacing it" in p.stderr
    assert p.stderr.count("starting a replacement") <= 6, p.stderr
    assert spool.live_workers() == []


def test_a_writer_file_abandoned_in_tmp_goes_to_rejected_after_an_hour(spool):
    from queuectl.recovery import TMP_GRACE, Recovery
    from queuectl.settings import Watched
    from queuectl.spool import Spool

    with open(spool.path("tmp", "half.json"), "w") as f:
        f.write('{"command": "ec')  # a writer that died mid-write
    s = Spool(spool.root).ensure()
    logged = []
    rec = Recovery(s, Watched(s.config_path), logged.append)
    now = time.time()
    rec.tmp(now, now)
    assert spool.ls("tmp") == ["half.json"]  # a writer may still be at work
    rec.tmp(now + TMP_GRACE + 1, now + TMP_GRACE + 1)
    assert spool.ls("tmp") == [] and spool.ls("rejected") == ["half.json", "half.json.reason"]
    assert "never renamed it into pending/" in open(spool.path("rejected", "half.json.reason")).read()
    assert open(spool.path("rejected", "half.json")).read() == '{"command": "ec'


def test_a_file_written_in_place_in_pending_runs_once_closed(spool):
    spool.start_workers()
    path = spool.path("pending", "inplace.json")
    with open(path, "w") as f:
        f.write('{"command": ')
        f.flush()
        time.sleep(0.3)  # a slow writer: the worker must not read the half-written file
        f.write(json.dumps("echo written in place") + "}")
    spool.wait_counts(completed=1)
    assert spool.counts()["rejected"] == 0
    assert spool.run("logs", "inplace", check=0).stdout == "written in place\n"
