"""The paths an os call names, whether given whole or relative to a directory handle (dir_fd=,
src_dir_fd=, dst_dir_fd=): spool.py reaches every spool folder through a handle, so test doubles of
os functions resolve the names they are given here."""

import os


def fd_path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def at(path, dir_fd=None):
    """PATH as a full path: an fd's path, PATH itself, or PATH in the folder DIR_FD."""
    if isinstance(path, int):
        return fd_path(path)
    path = os.fsdecode(path)
    if dir_fd is None or os.path.isabs(path):
        return path
    return os.path.join(fd_path(dir_fd), path)


def named(args, kwargs):
    """The full paths of the first two arguments of an os call (file names, or fds)."""
    fds = (kwargs.get("src_dir_fd", kwargs.get("dir_fd")), kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))
    return [at(a, fds[i]) if isinstance(a, (str, bytes, os.PathLike)) else a for i, a in enumerate(args[:2])]
