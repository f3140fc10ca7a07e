"""Safe file I/O, knowing nothing of the spool: create without following links, write whole,
make durable, read without blocking, probe for a writer, give a file a second name.

The spool protocol (spool.py) is built on these; no other module calls them with spool paths.
"""

import errno
import os
import stat

from queuectl.errors import JobInvalid, Untrusted

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
SYNCFS_MIN = 8  # from this many files on, one syncfs beats an fsync per file (measured: bench/)


def create(path, mode, append=False, dir_fd=None):
    """Open a new file at PATH (relative to DIR_FD if given) for writing; fails if anything (a
    planted symlink too) is there. The file gets MODE exactly, whatever the umask."""
    fd = os.open(path, _CREATE_FLAGS | (os.O_APPEND if append else 0), mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask took bits away (0640 under 077): the documented mode it is
    except BaseException:
        os.close(fd)
        unlink_quiet(path, dir_fd)
        raise
    return fd


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file(path, data, mode=0o600, sync=True, dir_fd=None, owner=None):
    """Create PATH holding DATA; fsync when asked; OWNER (uid, gid): fchown it (root keeping a
    file another user's). Nothing is left at PATH on an error."""
    fd = create(path, mode, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quiet(path, dir_fd)
        raise
    os.close(fd)


def write_atomic(path, data, mode, owner=None):
    """Replace PATH with DATA: write beside it, fsync, rename, fsync the folder."""
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    write_file(tmp, data, mode, owner=owner)
    try:
        os.rename(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush(fds):
    """Make the data of FDS durable: an fsync each, or for a batch of SYNCFS_MIN or more one
    syncfs(2) of the whole file system (Linux), which waits for one journal commit, not one per file."""
    if len(fds) >= SYNCFS_MIN and _syncfs(fds[0]):
        return
    for fd in fds:
        os.fsync(fd)


_libc = None


def _syncfs(fd):
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syncfs  # noqa: B018 - raises AttributeError where there is none
        except (OSError, AttributeError, ImportError):
            _libc = False
    if not _libc:
        return False
    if _libc.syncfs(fd) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def unlink_quiet(path, dir_fd=None):
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


def open_regular(path, dir_fd=None):
    """(fd, stat) of the regular file PATH opened for reading, never blocking nor following a
    link: a FIFO, device, socket, folder or symlink is refused at once (NotRegular), unopened
    when the lstat tells (opening a device can act on it)."""
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(st)
    try:
        fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # RACE: swapped for a symlink after the lstat: refuse it all the same
            raise NotRegular(os.stat(path, dir_fd=dir_fd, follow_symlinks=False)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(st)
    return fd, st


class NotRegular(JobInvalid):
    """Not a regular file; ST: its stat, for a message that says what it is and whose."""

    def __init__(self, st):
        super().__init__(f"not a regular file ({kind(st.st_mode)})")
        self.st = st

    def describe(self):
        return describe(self.st)


def describe(st):
    """'a FIFO owned by user 'bob' (uid 1001), mode 0644', for error messages."""
    what = kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else "regular file"
    return f"a {what} owned by {user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def read_regular(path, max_bytes, owners=None, dir_fd=None):
    return read_regular_stat(path, max_bytes, owners, dir_fd)[0]


def read_regular_stat(path, max_bytes, owners=None, dir_fd=None):
    """(bytes, fstat) of a regular file, refusing anything else without blocking or following links.

    OWNERS: the uids whose files are accepted (None: anyone's), checked on the file read (fstat).
    Raises JobInvalid (NotRegular, too big), Untrusted (owned by another uid), FileNotFoundError
    (gone).
    """
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(st)
    _check_owner(st, owners)
    if st.st_size > max_bytes:
        raise JobInvalid(f"file is {st.st_size} bytes, over the max-job-bytes limit of {max_bytes}")
    fd, st = open_regular(path, dir_fd)
    try:
        _check_owner(st, owners)  # RACE: another file may have been moved to PATH after the lstat
        data = _read_capped(fd, max_bytes)
    finally:
        os.close(fd)
    return data, st


def _read_capped(fd, max_bytes):
    """The bytes of FD, refusing more than MAX_BYTES (a file may grow after its stat)."""
    chunks, left = [], max_bytes + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise JobInvalid(f"file is over the max-job-bytes limit of {max_bytes}")
    return data


def _check_owner(st, owners):
    if owners is not None and st.st_uid not in owners:
        raise Untrusted(f"owned by {user(st.st_uid)}, whom this worker does not trust (trusted-users)", st.st_uid)


def read_checked(path, max_bytes, check, dir_fd=None):
    """The bytes of PATH and CHECK(fstat) of the very file read (CHECK raises ValueError to refuse
    it): the lstat, then an O_NOFOLLOW|O_NONBLOCK open (open_regular), so neither a symlink nor a
    FIFO is ever followed or waited on. Raises JobInvalid (refused), FileNotFoundError (gone)."""
    fd, st = open_regular(path, dir_fd)
    try:
        try:
            result = check(st)
        except ValueError as e:
            raise JobInvalid(str(e)) from None
        data = _read_capped(fd, max_bytes)
    finally:
        os.close(fd)
    return data, result


def has_writer(path, dir_fd=None):
    """Does any process have PATH open for writing? True, False, or None when it cannot be told.

    Linux: a read lease (F_SETLEASE) is granted only on a file nobody has open for writing; it
    needs the file's owner or CAP_LEASE."""
    try:
        import fcntl

        fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    except (ImportError, OSError):
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    except AttributeError:
        return None
    except OSError as e:
        return True if e.errno in (errno.EAGAIN, errno.EBUSY) else None
    finally:
        os.close(fd)


def link_unique(src, src_dir_fd, dir_fd, name):
    """Give SRC (relative to SRC_DIR_FD) a second name in the folder DIR_FD: NAME, or NAME.1,
    NAME.2... if taken (never replacing a file). A folder cannot be linked: it is renamed
    instead. Returns the name used."""
    base, n = name, 0
    while True:
        try:
            os.link(src, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            return name
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EISDIR, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            if not lexists(name, dir_fd):
                os.rename(src, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd)
                return name
        n += 1
        name = f"{base}.{n}"


def lexists(name, dir_fd=None):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def name_of_same_file(src, src_dir_fd, dir_fd, name):
    """The name (NAME, NAME.1, ... as link_unique gives them) under which the folder DIR_FD
    already holds the very file SRC, or None: tells whether an interrupted link_unique had committed."""
    ino = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False).st_ino
    base, n = name, 0
    while True:
        try:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == ino:
                return name
        except FileNotFoundError:
            return None  # the names are taken in order: the first free one ends the search
        n += 1
        name = f"{base}.{n}"


def user(uid):
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def kind(mode):
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"
