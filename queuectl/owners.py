"""Who may act on whose files in a shared spool (spool_layout.md, Security): the one place that
says whether this process may rewrite a job, change the settings, or stop a worker.

A rewrite makes the new file this process's user's: without these checks, a command run by one
user would turn another user's job into its own (which that user's workers then refuse), and root
would turn every job it touches into root's.
"""

import os

from queuectl.errors import NotYours  # noqa: F401  (raised here; importers take it from here too)


def user_name(uid):
    """A user's name for messages: the passwd name, else 'uid N'."""
    import pwd

    if uid is None:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def who_may(uid):
    """'alice or root' (just 'root' for root's own)."""
    name = user_name(uid)
    return name if uid == 0 else f"{name} or root"


def may_act_on(uid):
    """May this process act on a file (or process) of UID? Its own user's, or anyone's as root."""
    me = os.geteuid()
    return me == 0 or uid == me


def check_may_rewrite(st, action, what):
    """Refuse ACTION ('retry', 'cancel', ...) of WHAT (e.g. "job 'x'") when the file whose lstat or
    fstat is ST belongs to another user and this process is not root. Raises NotYours."""
    if not may_act_on(st.st_uid):
        raise NotYours(f"{what} belongs to user {user_name(st.st_uid)}; only {who_may(st.st_uid)} can {action} it")


def keep_owner(st):
    """(uid, gid) to give a rewrite of the file whose stat is ST so that it stays its owner's:
    root's rewrite of another user's job (a rewrite is otherwise owned by its writer); None when
    the rewrite is this user's own anyway."""
    if os.geteuid() == 0 and st.st_uid != 0:
        return st.st_uid, st.st_gid
    return None


def spool_owner(root):
    """The uid that owns the spool (the owner of its root folder)."""
    return os.stat(root).st_uid


def check_may_configure(root, path):
    """Only the spool's owner, or root, changes its settings: workers obey config.json only when
    one of them wrote it (settings.read_file). Raises NotYours."""
    owner = spool_owner(root)
    if not may_act_on(owner):
        raise NotYours(f"only the spool's owner {user_name(owner)} may change its settings ({path})")
