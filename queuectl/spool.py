"""The spool protocol: every path, name and rename in the spool lives here (see spool_layout.md).

Other modules ask this one; none of them joins a spool path or renames a spool file itself.
"""

import errno
import os
import time
import re
import stat

from queuectl import job as jobdoc
from queuectl.errors import DuplicateId, JobInvalid, NotFound, SpoolError
from queuectl.job import ID_PATTERN
from queuectl.procs import worker_id
from queuectl.timeutil import iso, parse_iso, parse_stamp, stamp

DIRS = ("tmp", "pending", "processing", "done", "dead", "rejected", "logs", "workers", "ids")
FINAL_DIR = {"completed": "done", "dead": "dead"}

_WORKER = r"[A-Za-z0-9.-]+\.\d+\.\d+"
PENDING_RE = re.compile(r"(\d{8}T\d{6}(?:\.\d{1,6})?Z)_(" + ID_PATTERN + r")\.json\Z")
CLAIM_RE = re.compile(r"(\d{8}T\d{6}(?:\.\d{1,6})?Z)_(" + ID_PATTERN + r")@(" + _WORKER + r")\.json\Z")
ADOPT_RE = re.compile(r"(.+)@(" + _WORKER + r")\.adopt\Z", re.S)
FINAL_RE = re.compile(r"(" + ID_PATTERN + r")\.json\Z")
LOG_RE = re.compile(r"(" + ID_PATTERN + r")\.(\d+)\.log\Z")
TMP_RE = re.compile(r"qc-(" + _WORKER + r")-[0-9a-f]+\.(enqueue|write)\Z")
REASON_SUFFIX = ".reason"

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


# -- names: one function formats each kind, one parses it ------------------------------------


def pending_name(not_before, job_id):
    return f"{stamp(not_before)}_{job_id}.json"


def parse_pending(name):
    """A pending/ name -> (not_before or None, id). (None, None) for a drop-in's free-form name."""
    m = PENDING_RE.match(name)
    if not m:
        return None, None
    try:
        return parse_stamp(m.group(1)), m.group(2)
    except ValueError:
        return None, None


def claim_name(pending, wid):
    """The claim of pending/PENDING by worker WID: the pending name with the worker added, so it
    is unique per attempt (a worker's claim of a retry never reuses the name that the attempt
    before still holds until it is settled) and tells where the job would go back to."""
    return f"{pending[:-5]}@{wid}.json"


def reclaim_name(cname, wid):
    """The same claim taken over by worker WID (recovery)."""
    stem, _, rest = cname.rpartition("@")
    return f"{stem}@{wid}.{'adopt' if rest.endswith('.adopt') else 'json'}"


def pending_of_claim(cname):
    """The pending/ name a job claim came from."""
    return cname.rpartition("@")[0] + ".json"


def adopt_name(original, wid):
    return f"{original}@{wid}.adopt"


def parse_claim(name):
    """A processing/ name -> (kind, key, worker id) with kind 'job' or 'adopt'; None if neither."""
    m = CLAIM_RE.match(name)
    if m:
        return "job", m.group(2), m.group(3)
    m = ADOPT_RE.match(name)
    if m:
        return "adopt", m.group(1), m.group(2)
    return None


def final_name(job_id):
    return f"{job_id}.json"


def log_name(job_id, seq):
    return f"{job_id}.{seq}.log"


def dropin_id(name):
    """The id a drop-in named NAME gets when it has no id field: its stem if valid, else None."""
    nb, pid = parse_pending(name)
    if pid:
        return pid
    stem = name[:-5] if name.endswith(".json") else name
    return stem if jobdoc.valid_id(stem) else None


# -- low-level file operations ----------------------------------------------------------------


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, data, mode=0o600, sync=True):
    """Create PATH (never following a planted symlink) holding DATA; fsync when asked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(path)
        raise
    os.close(fd)


SYNCFS_MIN = 8  # from this many files on, one syncfs beats an fsync per file (measured: bench/)


def flush(fds):
    """Make the data of FDS durable: an fsync each, or for a large batch one syncfs(2) of the
    whole file system (Linux), which waits for one journal commit instead of one per file."""
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


def write_atomic(path, data):
    """Replace PATH with DATA: write beside it, fsync, rename, fsync the folder."""
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    shared = os.stat(os.path.dirname(path) or ".").st_mode & 0o070
    write_file(tmp, data, 0o660 if shared else 0o600)
    try:
        os.rename(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def read_regular(path, max_bytes, owners=None):
    """The bytes of a regular file, refusing anything else without blocking or following links.

    OWNERS: the uids whose files are accepted (None: anyone's). Raises JobInvalid (not a job
    file, or not trusted), FileNotFoundError (gone: someone else moved it).
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise JobInvalid(f"not a regular file ({_kind(st.st_mode)})")
    if owners is not None and st.st_uid not in owners:
        raise JobInvalid(f"owned by {_user(st.st_uid)}, who is not in the trusted-users setting")
    if st.st_size > max_bytes:
        raise JobInvalid(f"file is {st.st_size} bytes, over the max-job-bytes limit of {max_bytes}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise JobInvalid("not a regular file (symlink)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JobInvalid(f"not a regular file ({_kind(st.st_mode)})")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise JobInvalid(f"file is over the max-job-bytes limit of {max_bytes}")
    return data


def open_for_writing(path):
    """Does any process have PATH open for writing? True, False, or None when it cannot be told.

    Linux: a read lease (F_SETLEASE) is granted only on a file nobody has open for writing; it
    needs the file's owner or CAP_LEASE. Used only for young files that do not parse yet."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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


def _user(uid):
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _kind(mode):
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


def _os_error(action, e):
    return SpoolError(f"{action}: {e.strerror or e} ({e.filename or ''})".replace(" ()", ""))


# -- the spool --------------------------------------------------------------------------------


def _gid(group):
    import grp

    try:
        return int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise SpoolError(f"no group named {group!r}") from None


def default_root():
    env = os.environ.get("QUEUECTL_SPOOL")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "queuectl")


class Spool:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.config_path = os.path.join(self.root, "config.json")
        self.worker_log = os.path.join(self.root, "worker.log")
        self._wid = None
        self.file_mode = 0o600  # 0660 in a spool shared with a group (see ensure)

    @property
    def wid(self):
        """This process's worker id (host.pid.start); recomputed after a fork."""
        if self._wid is None or self._wid_pid != os.getpid():
            self._wid, self._wid_pid = worker_id(), os.getpid()
        return self._wid

    def dir(self, name):
        return os.path.join(self.root, name)

    def path(self, folder, name):
        return os.path.join(self.root, folder, name)

    def ensure(self, group=None):
        """Create the spool and its folders if missing (0700; with GROUP: 2770, shared with it).

        A spool folder that is a symlink is refused: it could send writes outside the spool.
        Raises SpoolError.
        """
        mode = 0o2770 if group is not None else 0o700
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            paths = [self.root] + [self.dir(d) for d in DIRS]
            for path in paths[1:]:
                try:
                    os.mkdir(path, mode & 0o777)
                except FileExistsError:
                    pass
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise SpoolError(f"{path} is not a folder ({_kind(st.st_mode)}); refusing to use it")
            if group is not None:
                gid = _gid(group)
                for path in paths:
                    os.chown(path, -1, gid)
                    os.chmod(path, mode)
            self.file_mode = 0o660 if os.stat(self.root).st_mode & 0o070 else 0o600
        except OSError as e:
            raise _os_error(f"cannot create spool {self.root}", e) from None
        return self

    def _tmp_path(self, purpose):
        return self.path("tmp", f"qc-{self.wid}-{os.urandom(6).hex()}.{purpose}")

    def _stage(self, datas, purpose="write"):
        """Write each of DATAS to a new file in tmp/ and fsync them all: the fsyncs of one batch
        share the disk's flushes. Returns the tmp paths; on an error none is left behind."""
        paths, fds = [], []
        try:
            for data in datas:
                path = self._tmp_path(purpose)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, self.file_mode)
                paths.append(path)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            flush(fds)
        except BaseException:
            for path in paths:
                _unlink_quiet(path)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        return paths

    def _publish(self, moves):
        """Rename each staged (tmp path, folder, name) into place, then fsync each folder once."""
        try:
            for i, (tmp, folder, name) in enumerate(moves):
                os.rename(tmp, self.path(folder, name))
        except BaseException:
            for tmp, _, _ in moves[i:]:
                _unlink_quiet(tmp)
            raise
        for folder in dict.fromkeys(folder for _, folder, _ in moves):
            fsync_dir(self.dir(folder))

    # -- enqueue ------------------------------------------------------------------------------

    def reserve_id(self, job_id, token, src=None):
        """Take ids/ID atomically (it fails if the id is taken: then False).

        With SRC (a staged job file holding TOKEN), the reservation is a hard link to it: a link
        costs a tenth of a file creation here, and the token is inside. Otherwise a new file
        holding TOKEN (drop-in adoption).
        """
        try:
            if src is not None:
                os.link(src, self.path("ids", job_id), follow_symlinks=False)
                return True
            # the token is written before the name appears: a crash cannot leave an empty entry
            tmp = self._tmp_path("write")
            write_file(tmp, token.encode(), self.file_mode, sync=False)
            try:
                os.link(tmp, self.path("ids", job_id), follow_symlinks=False)
            finally:
                _unlink_quiet(tmp)
        except FileExistsError:
            return False
        return True

    def reservation(self, job_id):
        """The token that holds ID, or None. ('' for a reservation that cannot be read.)"""
        try:
            data = read_regular(self.path("ids", job_id), 1 << 30)
        except FileNotFoundError:
            return None
        except (OSError, JobInvalid):
            return ""
        if data.startswith(b"{"):  # a link to the job as it was enqueued
            try:
                return str(jobdoc.parse_bytes(data).get("token") or "")
            except JobInvalid:
                return ""
        return data.decode("ascii", "replace")

    def enqueue(self, accepted):
        """Store accepted jobs [(job, not_before)] with one fsync batch for all (transition 1).

        Returns a list with, per job, its id or the QueuectlError that refused it.
        """
        try:
            staged = self._stage([jobdoc.dumps(job) for job, _ in accepted], "enqueue")
        except OSError as e:
            raise _os_error("cannot store the job", e) from None
        results, moves = [], []
        try:
            for tmp, (job, nb) in zip(staged, accepted):
                if self.reserve_id(job["id"], job["token"], src=tmp):
                    moves.append((tmp, "pending", pending_name(nb, job["id"])))
                    results.append(job["id"])
                else:
                    _unlink_quiet(tmp)
                    results.append(DuplicateId(f"a job with id {job['id']!r} already exists"))
            if moves:
                fsync_dir(self.dir("ids"))
                self._publish(moves)
        except OSError as e:
            for tmp, (job, nb) in zip(staged, accepted):
                _unlink_quiet(tmp)
                if not os.path.lexists(self.path("pending", pending_name(nb, job["id"]))):
                    if self.reservation(job["id"]) == job["token"]:  # not stored: give its id back
                        _unlink_quiet(self.path("ids", job["id"]))
            raise _os_error("cannot store the job", e) from None
        return results

    # -- reading job files --------------------------------------------------------------------

    def read(self, folder, name, max_bytes=1 << 30, owners=None):
        """Parse and validate FOLDER/NAME. Raises JobInvalid, FileNotFoundError."""
        return jobdoc.validate(jobdoc.parse_bytes(read_regular(self.path(folder, name), max_bytes, owners)))

    def listdir(self, folder):
        try:
            return os.listdir(self.dir(folder))
        except FileNotFoundError:
            return []

    # -- claims -------------------------------------------------------------------------------

    def claim(self, name, job_id, holder=None):
        """Rename pending/NAME into processing/ for HOLDER (default: this process).

        Returns the claim name, or None when another process won the rename.
        """
        cname = claim_name(name, holder or self.wid)
        try:
            os.rename(self.path("pending", name), self.path("processing", cname))
        except FileNotFoundError:
            return None
        return cname

    def claim_for_adoption(self, name):
        """Claim a drop-in for adoption; None if another process won. Raises OSError(ENAMETOOLONG)
        when the claim's name would not fit (see reject_long_name)."""
        cname = adopt_name(name, self.wid)
        try:
            os.rename(self.path("pending", name), self.path("processing", cname))
        except FileNotFoundError:
            return None
        return cname

    def claim_final(self, folder, job_id, now=None):
        """Claim done/ID.json or dead/ID.json for a CLI command; None if it is not there."""
        cname = claim_name(pending_name(now if now is not None else time.time(), job_id), self.wid)
        try:
            os.rename(self.path(folder, final_name(job_id)), self.path("processing", cname))
        except FileNotFoundError:
            return None
        return cname

    def claims(self):
        """[(name, kind, key, worker id)] for every claim in processing/."""
        out = []
        for name in self.listdir("processing"):
            parsed = parse_claim(name)
            if parsed:
                out.append((name,) + parsed)
        return out

    def release(self, cname, pname):
        """Put a claimed job back in pending/ unchanged (the attempt did not count)."""
        os.rename(self.path("processing", cname), self.path("pending", pname))

    def settle(self, cname, job, not_before=None):
        """Write JOB to the folder its state names, then drop the claim (transitions 5-9)."""
        return self.settle_many([(cname, job, not_before)])[0]

    def settle_many(self, items):
        """settle() for a batch [(claim name, job, not_before)], sharing the fsyncs.

        Idempotent: each destination name is fixed by the job, so after an error (nothing is
        left in tmp/) the whole batch can simply be settled again.
        """
        dests = []
        for cname, job, nb in items:
            if job["state"] in FINAL_DIR:
                dests.append((FINAL_DIR[job["state"]], final_name(job["id"])))
            else:
                dests.append(("pending", pending_name(nb, job["id"])))
        staged = self._stage([jobdoc.dumps(job) for _, job, _ in items])
        self._publish([(tmp, folder, name) for tmp, (folder, name) in zip(staged, dests)])
        for cname, _, _ in items:
            _unlink_quiet(self.path("processing", cname))
        return dests

    def unclaim_to(self, cname, folder, name):
        """Move a claim back where it came from, never replacing a file already there."""
        src = self.path("processing", cname)
        self._link_no_replace(src, folder, name)

    # -- rejected/ ----------------------------------------------------------------------------

    def _place(self, src, folder, name):
        """Give SRC a second name in FOLDER: NAME, or NAME.1, NAME.2... if taken (never replacing a
        file). A folder cannot be linked: it is renamed instead. Returns the name used."""
        base, n = name, 0
        while True:
            dst = self.path(folder, name)
            try:
                os.link(src, dst, follow_symlinks=False)
                return name
            except FileExistsError:
                pass
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EISDIR, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                    raise
                if not os.path.lexists(dst):
                    os.rename(src, dst)
                    return name
            n += 1
            name = f"{base}.{n}"

    def _link_no_replace(self, src, folder, name):
        """Move SRC to FOLDER/NAME (or NAME.N), durable in FOLDER before SRC goes. Returns the name."""
        name = self._place(src, folder, name)
        fsync_dir(self.dir(folder))
        _unlink_quiet(src)
        return name

    def copy_in(self, src, folder, name):
        """The name under which FOLDER holds the very file SRC (NAME or NAME.N), or None."""
        ino = os.lstat(src).st_ino
        base, n = name, 0
        while os.path.lexists(self.path(folder, name)):
            if os.lstat(self.path(folder, name)).st_ino == ino:
                return name
            n += 1
            name = f"{base}.{n}"
        return None

    def reject(self, cname, original, reason, now):
        """Move a claimed bad file to rejected/ under its own name, with NAME.reason beside it.

        Order: link into rejected/, write the reason, fsync rejected/, drop the claim. A crash in
        between leaves the claim, and recovery finishes the rejection (see copy_in)."""
        src = self.path("processing", cname)
        name = self.copy_in(src, "rejected", original)
        if name is None:
            name = self._place(src, "rejected", original)
        self._write_reason(name, reason, now)
        fsync_dir(self.dir("rejected"))
        _unlink_quiet(src)
        return name

    def _write_reason(self, name, reason, now):
        try:
            write_file(self.path("rejected", name + REASON_SUFFIX), f"{iso(now)} {reason}\n".encode(), self.file_mode, sync=False)
        except FileExistsError:
            pass

    def reject_tmp(self, name, reason, now):
        src = self.path("tmp", name)
        name = self._link_no_replace(src, "rejected", name)
        self._write_reason(name, reason, now)
        return name

    def reject_long_name(self, name, now):
        """Reject pending/NAME whose name is too long to carry a claim suffix.

        The file keeps its bytes but gets a shorter name (unique while it exists: the inode number);
        the reason file records the full original name. None if another process moved it first.
        """
        try:
            ino = os.lstat(self.path("pending", name)).st_ino
        except FileNotFoundError:
            return None
        short = f"{name[:150]}...{ino}"
        try:
            os.rename(self.path("pending", name), self.path("rejected", short))
        except FileNotFoundError:
            return None
        reason = f"{iso(now)} file name too long for the spool ({len(os.fsencode(name))} bytes); original name: {name!r}\n"
        write_file(self.path("rejected", short + REASON_SUFFIX), reason.encode(), self.file_mode, sync=False)
        fsync_dir(self.dir("rejected"))
        return short

    def rejected(self):
        """[(name, reason text or None)] of rejected files (reason files themselves excluded)."""
        names = set(self.listdir("rejected"))
        out = []
        for name in sorted(names):
            if name.endswith(REASON_SUFFIX) and name[: -len(REASON_SUFFIX)] in names:
                continue
            reason = None
            if name + REASON_SUFFIX in names:
                try:
                    with open(self.path("rejected", name + REASON_SUFFIX), "rb") as f:
                        reason = f.read().decode("utf-8", "replace").strip()
                except OSError:
                    pass
            out.append((name, reason))
        return out

    # -- finding a job by id ------------------------------------------------------------------

    def locate(self, job_id, include_processing=True):
        """Where job ID is: (state folder, file name), or None. O(1) for done/ and dead/."""
        for folder in ("done", "dead"):
            if os.path.lexists(self.path(folder, final_name(job_id))):
                return folder, final_name(job_id)
        if include_processing:
            for name, kind, key, _ in self.claims():
                if kind == "job" and key == job_id:
                    return "processing", name
        for name in self.listdir("pending"):
            if parse_pending(name)[1] == job_id:
                return "pending", name
        return None

    def load(self, job_id):
        """(folder, name, job) for ID. Raises NotFound."""
        where = self.locate(job_id) if jobdoc.valid_id(job_id) else None
        if where is None:
            raise NotFound(f"no job with id {job_id!r}")
        try:
            return where + (self.read(*where),)
        except FileNotFoundError:
            where = self.locate(job_id)  # it moved on while we looked: look once more
            if where is None:
                raise NotFound(f"no job with id {job_id!r}") from None
            return where + (self.read(*where),)

    # -- logs ---------------------------------------------------------------------------------

    def open_log(self, job_id, seq):
        """Open logs/ID.SEQ.log for writing; a planted file or symlink there is replaced, not followed."""
        path = self.path("logs", log_name(job_id, seq))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(path, flags, self.file_mode)
        except FileExistsError:
            os.unlink(path)
            return os.open(path, flags, self.file_mode)

    def logs_writable(self):
        return os.access(self.dir("logs"), os.W_OK)

    def log_path(self, name):
        return self.path("logs", name)

    # -- workers/ -----------------------------------------------------------------------------

    def heartbeat_path(self, wid):
        return self.path("workers", f"{wid}.json")

    def worker_ids(self):
        return [n[:-5] for n in self.listdir("workers") if n.endswith(".json") and not n.startswith(".")]

    def write_heartbeat(self, wid, data):
        """Replace workers/WID.json (not fsynced: a heartbeat is only as good as its mtime)."""
        path = self.heartbeat_path(wid)
        tmp = self.path("workers", f".{wid}.{os.urandom(3).hex()}.tmp")
        write_file(tmp, data, self.file_mode, sync=False)
        os.rename(tmp, path)

    def heartbeat_leftovers(self):
        """[(name, worker id)] of heartbeat temporary files (a worker died while writing one)."""
        out = []
        for name in self.listdir("workers"):
            if name.startswith(".") and name.endswith(".tmp"):
                out.append((name, name[1:].rsplit(".", 2)[0]))
        return out

    def drop_heartbeat_leftover(self, name):
        _unlink_quiet(self.path("workers", name))

    def remove_heartbeat(self, wid):
        _unlink_quiet(self.heartbeat_path(wid))

    def heartbeat_mtime(self, wid):
        try:
            return os.stat(self.heartbeat_path(wid)).st_mtime
        except OSError:
            return None

    # -- tmp/ ---------------------------------------------------------------------------------

    def tmp_files(self):
        """[(name, owner worker id or None, purpose or None, mtime)] of files in tmp/."""
        out = []
        for name in self.listdir("tmp"):
            try:
                mtime = os.lstat(self.path("tmp", name)).st_mtime
            except FileNotFoundError:
                continue
            m = TMP_RE.match(name)
            out.append((name, m.group(1) if m else None, m.group(2) if m else None, mtime))
        return out

    def roll_forward(self, name, job):
        """Finish an interrupted enqueue: its tmp/ file holds a complete job with its id reserved."""
        nb = parse_iso(job.get("run_at") or job["created_at"])
        os.rename(self.path("tmp", name), self.path("pending", pending_name(nb, job["id"])))
        fsync_dir(self.dir("pending"))

    def drop_tmp(self, name):
        _unlink_quiet(self.path("tmp", name))
