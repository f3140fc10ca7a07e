"""Real Unix users for the shared-host tests (CI runs as root).

`users(n)` makes N fresh users (and, with group=True, one group they all share) and removes them
afterwards; `UserSpool` drives the installed queuectl as one of them, without any capability, so
that what a test proves about permissions holds for an ordinary user. A test that cannot make
users fails loudly: it never skips.

The interpreter may live where only root may look (pyenv under /root, mode 0700). Then every
folder on the way to it is made traversable (o+x only: nothing becomes listable or readable that
was not) for the test session, and put back at exit; the change is printed to stderr.
"""

import atexit
import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid

import pytest

from conftest import QUEUECTL

_opened = []


def need_root(what):
    if os.geteuid() != 0:
        pytest.fail(f"this test needs root to {what} (CI runs as root); run it as root", pytrace=False)


def _restore():
    for path, mode in reversed(_opened):
        try:
            os.chmod(path, mode)
        except OSError:
            pass


def _make_reachable(path):
    """Let any user traverse to PATH's folder (o+x on each ancestor that lacks it)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        folder = os.sep.join(parts[:i]) or os.sep
        mode = stat.S_IMODE(os.stat(folder).st_mode)
        if not mode & 0o001:
            if not _opened:
                atexit.register(_restore)
            _opened.append((folder, mode))
            os.chmod(folder, mode | 0o001)
            print(f"tests/unixusers.py: made {folder} traversable (o+x) for this test session", file=sys.stderr)


_ready = False


def make_interpreter_reachable():
    global _ready
    if not _ready:
        for path in (sys.executable, os.path.realpath(sys.executable), QUEUECTL, sys.base_prefix, sys.prefix):
            _make_reachable(os.path.join(path, "x") if os.path.isdir(path) else path)
        _ready = True


def _run(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"cannot set up users ({' '.join(argv)}: {p.stderr.strip()})", pytrace=False)


@contextlib.contextmanager
def users(n, group=False):
    """N new users, each with its own group; with GROUP, also one shared group they all join.
    Yields (names, shared group name or None). Removed afterwards."""
    need_root("create users")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.fail(f"this test needs {tool} (CI has it)", pytrace=False)
    make_interpreter_reachable()
    tag = uuid.uuid4().hex[:8]
    names = [f"qc{tag}{chr(97 + i)}" for i in range(n)]
    shared = f"qc{tag}g" if group else None
    made_groups, made_users = [], []
    try:
        if shared:
            _run(["groupadd", shared])
            made_groups.append(shared)
        for name in names:
            _run(["groupadd", name])
            made_groups.append(name)
            argv = ["useradd", "--no-create-home", "--gid", name, "--shell", "/bin/sh"]
            if shared:
                argv += ["--groups", shared]
            _run(argv + [name])
            made_users.append(name)
        yield names, shared
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], capture_output=True)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True)


def shared_dir(owner=None):
    """A new folder under the system's temporary folder that every user may traverse (0755),
    owned by the user OWNER (root's if None)."""
    path = tempfile.mkdtemp(prefix="qc-users-")
    os.chmod(path, 0o755)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def as_user(user, argv):
    """ARGV run as USER with its own groups (initgroups), no capabilities."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--inh-caps=-all", *argv]


def user_env(user, spool_root, umask=None):
    pw = pwd.getpwnam(user)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "QUEUECTL_SPOOL": spool_root}
    return env


class UserSpool:
    """The spool at ROOT as USER sees it: run `queuectl` as USER (umask UMASK) in real subprocesses."""

    def __init__(self, root, user, umask=0o022):
        self.root, self.user, self.umask = str(root), user, umask
        self.env = user_env(user, self.root)
        self.procs = []

    def argv(self, *args):
        return self.argv_of([QUEUECTL, *args])

    def argv_of(self, argv):
        """ARGV (any program) run as USER, with the spool's umask."""
        return ["sh", "-c", f'umask {self.umask:03o} && exec "$@"', "sh", *as_user(self.user, argv)]

    def run(self, *args, input=None, check=None, timeout=60):
        p = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check is not None:
            assert p.returncode == check, f"{self.user}: queuectl {' '.join(args)} exited {p.returncode}, wanted {check}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        return p

    def enqueue(self, job):
        text = job if isinstance(job, str) else json.dumps(job)
        return self.run("enqueue", text, check=0).stdout.strip()

    def json(self, *args):
        return json.loads(self.run(*args, check=0).stdout)

    def shell(self, script, check=0):
        """Run the shell SCRIPT as USER (for drop-ins and attacks written as a user would)."""
        argv = ["sh", "-c", f"umask {self.umask:03o} && exec \"$@\"", "sh", *as_user(self.user, ["sh", "-c", script])]
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        if check is not None:
            assert p.returncode == check, f"{self.user}: sh -c {script!r} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        return p

    def start_workers(self, *args, count=1):
        p = subprocess.Popen(self.argv("worker", "start", "--count", str(count), *args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=10)
