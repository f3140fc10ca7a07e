"""Fault injection for tests: loaded by every Python process whose PYTHONPATH holds this folder.

Inactive unless QUEUECTL_FAULTS names a rules file. Each line of that file is
    ERRNO FUNCTION [PATH-SUBSTRING]
for example `ENOSPC write /tmp/qc-` or `EMFILE pipe`. While the line is in the file, calls of
os.FUNCTION whose path (for fd functions: the fd's path) contains PATH-SUBSTRING fail with that
errno. Tests edit the file to start and end a fault; each hit appends a line to RULES.hits.
"""

import errno
import os

RULES = os.environ.get("QUEUECTL_FAULTS")

if RULES:
    _real = {name: getattr(os, name) for name in ("open", "write", "rename", "link", "mkdir", "fsync", "pipe", "posix_spawn", "unlink", "replace")}
    _cache = {"mtime": None, "rules": []}

    def _rules():
        try:
            mtime = os.stat(RULES).st_mtime_ns
        except OSError:
            return []
        if mtime != _cache["mtime"]:
            rules = []
            with open(RULES) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2:
                        rules.append((getattr(errno, parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
            _cache.update(mtime=mtime, rules=rules)
        return _cache["rules"]

    def _path_of(arg, dir_fd=None):
        """The path ARG names: an fd's path, or a name (relative to the folder DIR_FD if given:
        the spool reaches its folders through handles)."""
        if isinstance(arg, int):
            try:
                return os.readlink(f"/proc/self/fd/{arg}")
            except OSError:
                return ""
        if not isinstance(arg, (str, bytes, os.PathLike)):
            return ""
        path = os.fsdecode(arg)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(_path_of(dir_fd), path)
        return path

    def _wrap(name):
        real = _real[name]

        def wrapper(*args, **kwargs):
            for code, fn, where in _rules():
                if fn != name:
                    continue
                dirs = (kwargs.get("src_dir_fd", kwargs.get("dir_fd")), kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))
                paths = [_path_of(a, dirs[i]) for i, a in enumerate(args[:2])] if args else [""]
                if not where or any(where in p for p in paths):
                    with open(RULES + ".hits", "a") as f:
                        f.write(f"{os.getpid()} {name} {paths[0]}\n")
                    raise OSError(code, os.strerror(code), paths[0] or None)
            return real(*args, **kwargs)

        wrapper.__name__ = name
        return wrapper

    for _name in _real:
        setattr(os, _name, _wrap(_name))


# A clock step for tests: QUEUECTL_CLOCK_OFFSET names a file holding seconds (a float) added to
# time.time() from the moment it is written; the monotonic clock is left alone, as a real step
# of the system clock leaves it.
CLOCK = os.environ.get("QUEUECTL_CLOCK_OFFSET")

if CLOCK:
    import time as _time

    _real_time = _time.time
    _clock = {"mtime": None, "offset": 0.0}

    def _offset_time():
        try:
            mtime = os.stat(CLOCK).st_mtime_ns
        except OSError:
            return _real_time()
        if mtime != _clock["mtime"]:
            try:
                with open(CLOCK) as f:
                    _clock.update(mtime=mtime, offset=float(f.read().strip() or 0))
            except (OSError, ValueError):
                pass
        return _real_time() + _clock["offset"]

    _time.time = _offset_time
