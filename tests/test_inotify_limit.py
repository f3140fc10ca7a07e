"""A worker that can get no inotify instance (fs.inotify.max_user_instances used up by other
programs of its user) still runs jobs: it says so once and lists pending/ every second instead of
crashing in a loop (seen with 64 workers on one host, each watching pending/ and requests/).

The limit is per user: the test uses up a fresh user's instances with a process of that user, so
nothing else on the host is touched. Needs root (CI runs as root) to make the user."""

import os
import subprocess
import sys
import time

from conftest import wait_until
from unixusers import UserSpool, shared_dir, users

HOG = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while True:
    fd = libc.inotify_init()
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), flush=True)
sys.stdin.read()  # hold them until the test closes our stdin
"""


def test_a_worker_without_inotify_lists_pending_every_second_and_runs_jobs():
    with users(1) as ((name,), _):
        root = os.path.join(shared_dir(owner=name), "spool")
        u = UserSpool(root, name)
        u.run("init", check=0)
        hog = subprocess.Popen(u.argv_of([sys.executable, "-c", HOG]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=u.env)
        try:
            held = int(hog.stdout.readline())
            assert held >= 1, "the hog could not take a single inotify instance"
            pool = u.start_workers()
            try:
                wait_until(lambda: os.path.exists(os.path.join(root, "workers")) and os.listdir(os.path.join(root, "workers")), timeout=20)
                u.enqueue({"id": "first", "command": "true"})
                wait_until(lambda: os.path.exists(os.path.join(root, "done", "first.json")), timeout=10, message="no job ran without inotify")
                # a drop-in, as another language writes it: seen by the next listing, within about a second
                u.shell(f"printf '%s' '{{\"command\": \"true\"}}' > {root}/tmp/d && mv {root}/tmp/d {root}/pending/dropped.json")
                t = time.monotonic()
                wait_until(lambda: os.path.exists(os.path.join(root, "done", "dropped.json")), timeout=10, message="a drop-in was not picked up")
                assert time.monotonic() - t < 5
                assert pool.poll() is None, "the pool died"
            finally:
                pool.terminate()
                _, out = pool.communicate(timeout=30)
            assert "crashed" not in out and "died" not in out, out
            assert out.count("cannot watch pending/") == 1 and "listing it every 1 s instead" in out, out
        finally:
            hog.stdin.close()
            hog.wait(timeout=10)


def test_wait_and_cancel_without_inotify_still_end(tmp_path):
    """`wait` and `cancel` sleep on file-system events; with no inotify instance left they look
    four times a second instead, and still end with the right exit status."""
    with users(1) as ((name,), _):
        root = os.path.join(shared_dir(owner=name), "spool")
        u = UserSpool(root, name)
        u.run("init", check=0)
        u.enqueue({"id": "later", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
        u.enqueue({"id": "soon", "command": "sleep 1"})
        pool = u.start_workers()  # takes its inotify instances before the hog takes the rest
        try:
            wait_until(lambda: os.path.exists(os.path.join(root, "workers")) and os.listdir(os.path.join(root, "workers")), timeout=20)
            hog = subprocess.Popen(u.argv_of([sys.executable, "-c", HOG]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=u.env)
            try:
                int(hog.stdout.readline())
                p = u.run("wait", "soon", "--timeout", "30s")
                assert (p.returncode, p.stderr) == (0, ""), p.stderr
                p = u.run("cancel", "later")
                assert (p.returncode, p.stdout) == (0, "later: cancelled (pending, never runs again unless retried)\n"), (p.stdout, p.stderr)
                p = u.run("wait", "later", "--timeout", "5s")
                assert p.returncode == 1 and "dead" in p.stderr, p.stderr
            finally:
                hog.stdin.close()
                hog.wait(timeout=10)
        finally:
            pool.terminate()
            pool.communicate(timeout=30)
