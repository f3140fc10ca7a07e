"""The system spool (`queuectl init --system`): jobs run as the user who submitted them, like
at(1) and batch(1). Its workers run as root; this module is all that root decides about a file a
user wrote, and who its job runs as (spool_layout.md, Security, "The system spool").

Kept small on purpose: admit() is the whole list of checks between a user's file and a process
root starts for it. The I/O around it (O_NOFOLLOW|O_NONBLOCK, fstat of the very fd that is read,
strict parse) is fsio.read_checked and job.parse_bytes, shared with every other reader.
"""

import os
import pwd
import stat
from collections import namedtuple

MARKER = "system"  # SPOOL/system: a regular file owned by root, in a root-owned spool root
MARKER_TEXT = b"queuectl system spool: workers run as root, each job as its file's owner\n"
ROOT_MODE = 0o755
# Sticky (like /tmp): anyone may create a file; only its owner (or root) may rename or remove it.
# tmp/ and pending/ are where users write; ids/ where enqueue reserves; processing/ and dead/ are
# what a user's own `dlq retry` renames through. Listable where `status` counts.
FOLDER_MODES = {
    "tmp": 0o1733,
    "pending": 0o1777,
    "processing": 0o1777,
    "dead": 0o1777,
    "ids": 0o1777,
    "held": 0o1777,  # a user's own hold/release/retry renames there and back
    "requests": 0o1777,  # a user's cancel/hold of their own running job (a request counts only if its job's owner's or root's: Spool.requested)
    "done": 0o755,
    "rejected": 0o755,
    "logs": 0o755,
    "workers": 0o755,
}
CONFIG_MODE = 0o644  # config.json: read by every user's enqueue, written by root only
FILE_MODE = 0o600  # a job, its log, its history: only its owner (and root) reads them
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"

Owner = namedtuple("Owner", "uid gid groups name home shell")


def is_system(root_st, marker_st):
    """Is a spool whose root and SPOOL/system have these lstat results a system spool? Both
    root's: a user cannot make one (they cannot chown to root), nor turn a root's spool into one."""
    return (
        root_st is not None
        and marker_st is not None
        and root_st.st_uid == 0
        and stat.S_ISDIR(root_st.st_mode)
        and stat.S_ISREG(marker_st.st_mode)
        and marker_st.st_uid == 0
    )


def owner(uid):
    """The user with UID, from the password database: Owner. Raises KeyError if there is none."""
    pw = pwd.getpwuid(uid)
    try:
        groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    except OSError:
        groups = [pw.pw_gid]
    return Owner(uid, pw.pw_gid, tuple(groups), pw.pw_name, pw.pw_dir, pw.pw_shell or "/bin/sh")


def admit(st, max_bytes):
    """The checks root applies to the fstat ST of a user's job file before obeying it: a regular
    file, one link, an owner who is a user of this host, at most MAX_BYTES. Returns the Owner the
    job runs as; raises ValueError with the reason."""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_nlink != 1:
        # another name could change its content, and a link is how a root-owned file would
        # appear in a folder users write to
        raise ValueError(f"the file has {st.st_nlink} hard links; a job file must have exactly one")
    try:
        who = owner(st.st_uid)
    except KeyError:
        raise ValueError(f"owned by uid {st.st_uid}, which is no user of this host") from None
    if st.st_size > max_bytes:
        raise ValueError(f"file is {st.st_size} bytes, over the max-job-bytes limit of {max_bytes}")
    return who


def child_env(who, job_env, extra):
    """The environment of a job run as WHO: a clean one from their passwd entry (nothing of the
    worker's), the job's `env` over it, queuectl's variables (EXTRA) last."""
    env = {"HOME": who.home, "USER": who.name, "LOGNAME": who.name, "SHELL": who.shell, "PATH": CHILD_PATH}
    env.update(job_env or {})
    env.update(extra)
    return env


def child_cwd(who):
    """Where a job without `cwd` starts: its owner's home, or / when that is not a folder."""
    return who.home if who.home and os.path.isdir(who.home) else "/"


def describe(uid):
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"
