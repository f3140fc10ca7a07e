"""examples/ and README's drop-in line work as written, run as a user would run them."""

import os
import re
import subprocess

from conftest import QUEUECTL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def burst(spool):
    spool.run("worker", "start", "--burst", check=0, timeout=120)


def test_dropin_sh_twice_from_one_shell_pid_makes_two_jobs(spool):
    """Sourced twice by one shell, `$$` is the same both times, within one second: a name made
    from it would give the second job the first one's id, and it would be rejected."""
    script = os.path.join(EXAMPLES, "dropin.sh")
    shell = f'set -- "echo one"; . "{script}"; set -- "echo two"; . "{script}"; echo "pid $$"'
    p = subprocess.run(["sh", "-c", shell], env=spool.env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    first, second, _ = p.stdout.splitlines()
    assert first != second and "$$" not in first
    assert sorted(spool.ls("pending")) == sorted([first, second])
    burst(spool)
    counts = spool.counts()
    assert (counts["completed"], counts["rejected"]) == (2, 0), counts
    assert spool.run("logs", first, check=0).stdout == "one\n"  # the name is the id
    assert spool.run("logs", second, check=0).stdout == "two\n"


def test_dropin_sh_refuses_a_missing_spool(tmp_path):
    env = dict(os.environ, QUEUECTL_SPOOL=str(tmp_path / "typo"))
    p = subprocess.run(["sh", os.path.join(EXAMPLES, "dropin.sh"), "true"], env=env, capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stderr) == (1, f"dropin.sh: no spool at {tmp_path / 'typo'}; create it with queuectl init\n")
    assert not os.path.exists(tmp_path / "typo")


def test_readme_dropin_line_run_twice_by_one_shell_makes_two_jobs(spool):
    [line] = [ln for ln in re.findall(r"```sh\n(.*?)\n```", read("README.md"), re.S) if "$SPOOL/pending/" in ln]
    assert "$$" not in line
    env = dict(spool.env, SPOOL=spool.root)
    p = subprocess.run(["sh", "-c", f"{line}\n{line}"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert len(spool.ls("pending")) == 2
    burst(spool)
    counts = spool.counts()
    assert (counts["completed"], counts["rejected"]) == (2, 0), counts


def test_crontab_line_runs_under_crons_path(spool):
    """cron's PATH lacks the venv: the line names queuectl by its absolute path. Run it as cron
    would (sh -c, PATH=/usr/bin:/bin, % unescaped), with the placeholder path made this venv's."""
    [entry] = [ln for ln in read("examples", "crontab").splitlines() if ln.strip() and not ln.startswith("#")]
    fields = entry.split(None, 5)
    command = fields[5]
    assert command.startswith("/path/to/venv/bin/queuectl ")
    assert "command -v queuectl" in read("examples", "crontab")
    command = command.replace("/path/to/venv/bin/queuectl", QUEUECTL).replace("\\%", "%")
    env = {"PATH": "/usr/bin:/bin", "HOME": spool.root, "SHELL": "/bin/sh", "QUEUECTL_SPOOL": spool.root}
    p = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "already exists" in p.stderr  # fired twice: enqueued once
    [job] = spool.json("list", "--json")
    assert re.fullmatch(r"backup-\d{4}-\d\d-\d\d", job["id"])
    unpathed = subprocess.run(["/bin/sh", "-c", "command -v queuectl"], env=env, capture_output=True, text=True)
    if os.path.dirname(QUEUECTL) not in ("/usr/bin", "/bin"):
        assert unpathed.returncode != 0  # what the line would hit with a bare `queuectl`


def test_readme_links_every_example():
    readme = read("README.md")
    for name in sorted(os.listdir(EXAMPLES)):
        assert f"(examples/{name})" in readme, name


def test_dropin_py_makes_one_job_per_call_and_refuses_a_missing_spool(spool, tmp_path):
    script = os.path.join(EXAMPLES, "dropin.py")
    names = [subprocess.run(["python3", script, f"echo {w}"], env=spool.env, capture_output=True, text=True, check=True).stdout.strip() for w in ("a", "b")]
    assert names[0] != names[1] and sorted(spool.ls("pending")) == sorted(names)
    burst(spool)
    counts = spool.counts()
    assert (counts["completed"], counts["rejected"]) == (2, 0), counts
    env = dict(spool.env, QUEUECTL_SPOOL=str(tmp_path / "typo"))
    p = subprocess.run(["python3", script, "true"], env=env, capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (1, f"dropin.py: no spool at {tmp_path / 'typo'}; create it with queuectl init\n")
    assert not os.path.exists(tmp_path / "typo")


def test_metrics_crontab_line_writes_the_textfile_under_crons_path(spool, tmp_path):
    """The node_exporter line, run as cron would, with its placeholders made this test's."""
    from prometheus_client.parser import text_string_to_metric_families

    text = read("examples", "metrics.crontab")
    [entry] = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    command = entry.split(None, 5)[5]
    assert command.startswith("/path/to/venv/bin/queuectl metrics --textfile /var/lib/node_exporter/textfile_collector/")
    assert "command -v queuectl" in text and "--collector.textfile.directory=/var/lib/node_exporter/textfile_collector" in text
    collector = tmp_path / "textfile_collector"
    collector.mkdir()
    command = command.replace("/path/to/venv/bin/queuectl", QUEUECTL).replace("/var/lib/node_exporter/textfile_collector", str(collector))
    env = {"PATH": "/usr/bin:/bin", "HOME": spool.root, "SHELL": "/bin/sh", "QUEUECTL_SPOOL": spool.root}
    spool.enqueue({"command": "true"})
    p = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert os.listdir(collector) == ["queuectl.prom"]
    families = {f.name: f for f in text_string_to_metric_families((collector / "queuectl.prom").read_text())}
    assert {s.labels["state"]: s.value for s in families["queuectl_jobs"].samples}["pending"] == 1


def _unit(text):
    """{key: value} of the [Service] section of a systemd unit (later keys win)."""
    section, out = None, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_systemd_unit_stops_like_worker_stop(spool):
    """KillSignal is one SIGTERM (a graceful stop), ExecStop passes `worker stop` its default
    timeouts, and TimeoutStopSec covers both with room for the SIGKILLs to take effect."""
    import shlex

    from queuectl.cli import worker_stop
    from queuectl.timeutil import parse_duration

    unit = _unit(read("examples", "queuectl-worker.service"))
    assert unit["KillSignal"] == "SIGTERM" and unit["KillMode"] == "mixed"
    stop = shlex.split(unit["ExecStop"].lstrip("-"))
    assert stop[:3] == ["/usr/local/bin/queuectl", "worker", "stop"]
    opts = dict(zip(stop[3::2], stop[4::2]))
    defaults = {p.opts[0]: p.default for p in worker_stop.params if p.opts[0] in ("--timeout", "--kill-after")}
    assert opts == defaults == {"--timeout": "60s", "--kill-after": "10s"}
    timeout, kill_after = parse_duration(opts["--timeout"]), parse_duration(opts["--kill-after"])
    assert timeout + kill_after + 5 <= parse_duration(unit["TimeoutStopSec"]) <= timeout + kill_after + 60
