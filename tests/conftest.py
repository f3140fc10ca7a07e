"""Shared test tools: the installed `queuectl` run in real subprocesses against a temporary spool.

Synchronise with wait_until (a condition and a deadline), never with a bare sleep.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


def _find_queuectl():
    here = os.path.join(os.path.dirname(sys.executable), "queuectl")
    if os.path.exists(here):
        return here
    found = shutil.which("queuectl")
    if not found:
        raise RuntimeError("the queuectl console script is not installed: pip install '.[test]'")
    return found


QUEUECTL = _find_queuectl()


def wait_until(cond, timeout=10.0, interval=0.01, message=None):
    """Poll COND until it returns something truthy; fail the test after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s: {cond}")
        time.sleep(interval)


class Spool:
    """A temporary spool and helpers to drive the installed CLI against it."""

    def __init__(self, root):
        self.root = str(root)
        self.env = dict(os.environ, QUEUECTL_SPOOL=self.root)
        self.procs = []

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def run(self, *args, input=None, check=None, timeout=60):
        """Run `queuectl ARGS`; returns CompletedProcess (text). check=N asserts the exit code."""
        p = subprocess.run(
            [QUEUECTL, *args], input=input, capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check is not None:
            assert p.returncode == check, f"queuectl {' '.join(args)} exited {p.returncode}, wanted {check}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        return p

    def enqueue(self, job):
        """Enqueue a job (dict or JSON text); returns its id."""
        text = job if isinstance(job, str) else json.dumps(job)
        return self.run("enqueue", text, check=0).stdout.strip()

    def json(self, *args):
        return json.loads(self.run(*args, check=0).stdout)

    def counts(self):
        return self.json("status", "--json")["counts"]

    def show(self, job_id):
        return self.json("show", job_id)

    def ls(self, folder):
        try:
            return sorted(os.listdir(self.path(folder)))
        except FileNotFoundError:
            return []

    def start_workers(self, *args, count=1):
        """Start `queuectl worker start --count N ARGS` in the background; returns the Popen.

        Waits until every worker has registered its heartbeat. Stopped at test teardown.
        """
        p = subprocess.Popen(
            [QUEUECTL, "worker", "start", "--count", str(count), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        wait_until(lambda: len(self.live_workers()) >= count or p.poll() is not None, timeout=20)
        assert p.poll() is None, f"worker pool exited early: {p.communicate()}"
        return p

    def live_workers(self):
        return self.json("status", "--json")["workers"]

    def drop_in(self, name, content):
        """Write a job file the way spool_layout.md tells writers to: tmp/, then rename."""
        tmp = self.path("tmp", f"drop.{os.getpid()}.{time.monotonic_ns()}")
        data = content if isinstance(content, bytes) else (content if isinstance(content, str) else json.dumps(content)).encode()
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.path("pending", name))

    def wait_counts(self, timeout=20, **expected):
        """Wait until status counts include EXPECTED (e.g. completed=3)."""

        def ok():
            c = self.counts()
            return all(c[k] == v for k, v in expected.items()) and c

        return wait_until(ok, timeout=timeout, message=f"counts never reached {expected}; last {self.counts()}")

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # a stuck pool: kill it and its workers' groups
                for w in self.json("status", "--json")["workers"] if os.path.isdir(self.root) else []:
                    try:
                        os.killpg(w["pid"], signal.SIGKILL)
                    except OSError:
                        pass
                p.kill()
                try:
                    p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    s.run("init", check=0)
    yield s
    s.stop_all()
    # a test must not leave workers behind: stop any that were detached
    subprocess.run([QUEUECTL, "worker", "stop"], env=s.env, capture_output=True, timeout=60)
