"""The spool protocol: every path, rename, link and unlink in the spool happens here, following
the tables of layout.py (spool_layout.md). Other modules ask this one; none joins a spool path.

Concurrency: any number of processes act on one spool at once. A file that another process may
move under us is marked `RACE:`: who moved it, and why going on is safe.

Directory handles: every folder is reached through a file descriptor opened once per process
without following symlinks (`_fd`), and every open, rename, link, unlink and stat is relative to
it; so a folder swapped for a symlink (or another folder) while workers run redirects nothing. The
root is the user's choice: it is opened by its path once, following links. A method is written
with the primitives below (`_rename`, `_link`, `_unlink`, `_lstat`, `_create`, `_read`, `_fsync`,
`_listdir`), which take (folder, name) pairs ("" is the root) and raise OSErrors that name the
real path (`_path`), never a handle.
"""

import errno
import contextlib
import os
import stat
import time

from queuectl import fsio
from queuectl import job as jobdoc
from queuectl import sysspool
from queuectl import layout as L
from queuectl.errors import DuplicateId, JobInvalid, NotFound, NotYours, SpoolError
from queuectl.procs import worker_id
from queuectl.timeutil import iso, parse_iso


def _os_error(action, e):
    e = explain(e)
    return SpoolError(f"{action}: {e.strerror or e} ({e.filename or ''})".replace(" ()", ""))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
GROUP_DIR_MODE, PRIVATE_DIR_MODE = 0o2770, 0o700
GROUP_FILE_MODE, PRIVATE_FILE_MODE = 0o640, 0o600  # never writable but by their owner


def _user_name(uid):
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


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


def is_system_spool(root):
    """Is ROOT a system spool (queuectl init --system)? Its root and ROOT/system are root's."""
    sts = []
    for path in (root, os.path.join(root, sysspool.MARKER)):
        try:
            sts.append(os.lstat(path))
        except OSError:
            sts.append(None)
    return sysspool.is_system(*sts)


PUBLISHED, TAKEN_OVER = "published", "taken over"
LOCK = "config.json.lock"


def _close_quiet(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def explain(e):
    """E, its message saying whose the path is, its mode and what to do when permission was denied."""
    if e.errno in (errno.EACCES, errno.EPERM) and isinstance(e.filename, str) and ": it is " not in (e.strerror or ""):
        folder = os.path.dirname(e.filename)
        for path, it in ((e.filename, "it is"), (folder, f"its folder {folder} is")):
            try:
                what = fsio.describe(os.lstat(path))
            except OSError:
                continue
            e.strerror = (
                f"{e.strerror}: {it} {what}; ask its owner to fix the mode (queuectl init --group GROUP shares a spool "
                "with a group), or use a spool of your own"
            )
            break
    return e


class Commit:
    """One claimed job's new version on its way into place (Spool.commit): CLAIM is replaced by
    JOB in the folder its state names (pending/ under NOT_BEFORE for a retry; held/ instead with
    HOLD, when `queuectl hold` asked for it while the attempt ran)."""

    __slots__ = ("claim", "job", "not_before", "hold", "answers", "owner", "staged", "fence", "dest", "outcome")

    def __init__(self, claim, job, not_before=None, *, hold=False, answers=False, owner=None):
        self.claim, self.job, self.not_before, self.hold = claim, job, not_before, hold
        self.answers = answers  # it answers a request (requests/ID.*): remove it once published
        # whose the new version is: a sysspool.Owner (a system spool's root worker), a (uid, gid)
        # (root keeping a job its owner's, owners.keep_owner), or None: the writer's
        self.owner = owner
        self.staged = self.fence = self.dest = self.outcome = None


def _destination(job, not_before, hold=False):
    if job["state"] in ("completed", "dead"):
        return L.folder_of(job["state"]), L.final_name(job["id"])
    return "held" if hold else "pending", L.pending_name(not_before, job["id"])


class Spool:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.config_path = os.path.join(self.root, "config.json")
        self.pause_path = os.path.join(self.root, L.PAUSED)
        self._wid = None
        self._system = None
        self.file_mode = PRIVATE_FILE_MODE  # GROUP_FILE_MODE in a spool shared with a group (see ensure)
        self._handles, self._handles_pid = {}, None  # folder ("" the root) -> fd, of this process
        self._swapped = set()  # folders already reported swapped (check_folders)

    @property
    def wid(self):
        """This process's worker id (host.pid.start.nNS); recomputed after a fork."""
        if self._wid is None or self._wid_pid != os.getpid():
            self._wid, self._wid_pid = worker_id(), os.getpid()
        return self._wid

    def _dir(self, folder):
        """The path of FOLDER, for messages and watching only: files are reached through _fd."""
        return os.path.join(self.root, folder) if folder else self.root

    def _path(self, folder, name):
        """The path of FOLDER/NAME, for messages only."""
        return os.path.join(self._dir(folder), name)

    # -- directory handles and the primitives built on them ------------------------------------

    def _fd(self, folder=""):
        """The handle of FOLDER ("" the root), opened once per process: a child of a fork opens its
        own (a shared open file description would share a listing's offset between processes)."""
        if self._handles_pid != os.getpid():
            if self._handles_pid is not None:
                for fd in self._handles.values():  # the parent's, inherited: ours are opened anew
                    _close_quiet(fd)
            self._handles, self._handles_pid = {}, os.getpid()
        fd = self._handles.get(folder)
        if fd is None:
            if not folder:
                fd = os.open(self.root, _DIR_FLAGS)  # the user's choice: a symlink is followed, once
            else:
                fd = self._open_folder(folder)
            self._handles[folder] = fd
        return fd

    def close(self):
        """Let go of this process's handles (they are opened again at the next use)."""
        try:
            if self._handles_pid == os.getpid():
                for fd in self._handles.values():
                    _close_quiet(fd)
        except Exception:  # at interpreter exit, from __del__
            pass
        self._handles, self._handles_pid = {}, None

    __del__ = close

    def _open_folder(self, folder):
        root = self._fd("")
        try:
            return os.open(folder, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=root)
        except PermissionError as e:
            if not hasattr(os, "O_PATH"):
                raise self._named(e, "", folder) from None
            # a folder this user may write into but not list (a system spool's tmp/, 1733): a
            # handle that only reaches it (openat, renameat) is all its writers need
            try:
                return os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=root)
            except OSError as e2:
                raise self._named(e2, "", folder) from None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise self._named(e, "", folder) from None
            try:
                what = fsio.describe(os.stat(folder, dir_fd=root, follow_symlinks=False))
            except OSError:
                what = "something else"
            raise OSError(
                e.errno,
                f"{self._dir(folder)} is {what}, not a folder: refusing to use it (it could send the spool's files "
                f"elsewhere); the spool's owner ({self.owner_name()}) should remove it and run `queuectl init`",
            ) from None

    def owner_name(self):
        try:
            return _user_name(os.fstat(self._fd("")).st_uid)
        except OSError:
            return "unknown"

    def _named(self, e, folder, name, folder2=None, name2=None):
        """E with its file names made real paths (a call relative to a handle names only NAME)."""
        if e.filename is not None and not isinstance(e.filename, int):
            e.filename = self._path(folder, name)
        if folder2 is not None and e.filename2 is not None:
            e.filename2 = self._path(folder2, name2)
        return e

    def _rename(self, sf, sn, df, dn):
        try:
            os.rename(sn, dn, src_dir_fd=self._fd(sf), dst_dir_fd=self._fd(df))
        except OSError as e:
            raise self._named(e, sf, sn, df, dn) from None

    def _link(self, sf, sn, df, dn):
        try:
            os.link(sn, dn, src_dir_fd=self._fd(sf), dst_dir_fd=self._fd(df), follow_symlinks=False)
        except OSError as e:
            raise self._named(e, sf, sn, df, dn) from None

    def _unlink(self, folder, name):
        try:
            os.unlink(name, dir_fd=self._fd(folder))
        except OSError as e:
            raise self._named(e, folder, name) from None

    def _unlink_quiet(self, folder, name):
        try:
            os.unlink(name, dir_fd=self._fd(folder))
        except OSError:
            pass

    def _lstat(self, folder, name):
        try:
            return os.stat(name, dir_fd=self._fd(folder), follow_symlinks=False)
        except OSError as e:
            raise self._named(e, folder, name) from None

    def _lexists(self, folder, name):
        try:
            self._lstat(folder, name)
        except FileNotFoundError:
            return False
        return True

    def _create(self, folder, name, append=False):
        """A new file FOLDER/NAME (O_EXCL, never through a link), mode file_mode whatever the umask."""
        try:
            return fsio.create(name, self.file_mode, append, dir_fd=self._fd(folder))
        except OSError as e:
            raise self._named(e, folder, name) from None

    def _write_file(self, folder, name, data, sync=True):
        try:
            fsio.write_file(name, data, self.file_mode, sync, dir_fd=self._fd(folder))
        except OSError as e:
            raise self._named(e, folder, name) from None

    def _read(self, folder, name, max_bytes, owners=None):
        """The bytes of the regular file FOLDER/NAME, without blocking (fsio.read_regular)."""
        try:
            return fsio.read_regular(name, max_bytes, owners, dir_fd=self._fd(folder))
        except OSError as e:
            raise self._named(e, folder, name) from None

    def _fsync(self, folder):
        try:
            os.fsync(self._fd(folder))
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
            # an O_PATH handle (a folder this user may not read, see _open_folder): what this user
            # puts there is made durable by the fsync of the folder it is renamed into

    def _listdir(self, folder):
        """The names in FOLDER, read through a new open of it (its own offset: listings in
        several threads never interleave)."""
        fd = os.open(".", _DIR_FLAGS, dir_fd=self._fd(folder))
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def check_folders(self):
        """Look at the handles against the paths. A folder removed (an unmounted or remade
        spool) is opened again at its next use; a folder whose path names another folder now
        (renamed away, replaced by a symlink) keeps its handle: nothing is written through the
        new path. Returns a message for each folder newly found swapped (say it once)."""
        if self._handles_pid != os.getpid():
            return []
        out = []
        try:
            gone = os.fstat(self._handles[""]).st_nlink == 0 if "" in self._handles else False
        except OSError:
            gone = True
        for folder, fd in list(self._handles.items()):
            try:
                st = os.fstat(fd)
                if gone or st.st_nlink == 0:
                    raise FileNotFoundError
            except OSError:
                _close_quiet(self._handles.pop(folder))
                self._swapped.discard(folder)
                continue
            try:
                now = os.stat(folder, dir_fd=self._handles[""], follow_symlinks=False) if folder else os.stat(self.root)
                same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
                what = fsio.describe(now)
            except OSError as e:
                same, what = False, f"gone ({e.strerror})"
            if not same and folder not in self._swapped:
                self._swapped.add(folder)
                out.append(
                    f"{self._dir(folder)} is not the folder opened at start any more (now {what}): "
                    "still using the folder opened at start, nothing goes through the new path; "
                    f"the spool's owner ({self.owner_name()}) should put the folder back and restart the workers"
                )
        return out

    def ensure(self, group=None, create=True):
        """Create the spool and its folders if missing (0700; with GROUP: 2770, shared with it).

        Without CREATE the spool's root must exist (a mistyped or unmounted --spool is not made
        silently): its missing folders are still made (an older or half-made spool), with the
        mode of the spool's kind (a root with group bits is a group spool). Modes are set
        explicitly, whatever the umask. A spool folder that is a symlink is refused: it could
        send writes outside the spool. Raises SpoolError.
        """
        if not create and not os.path.isdir(self.root):
            raise SpoolError(f"no spool at {self.root}; create it with queuectl init")
        if self.system:
            self.file_mode = sysspool.FILE_MODE
            return self  # made by root (make_system): nobody else may add to it
        try:
            if not os.path.isdir(self.root):
                os.makedirs(self.root, mode=PRIVATE_DIR_MODE, exist_ok=True)
                os.chmod(self.root, PRIVATE_DIR_MODE)  # the umask's say ends here
            root = self._fd("")
            st = os.fstat(root)
            if group is not None:
                gid = _gid(group)
                os.fchown(root, -1, gid)
                os.fchmod(root, GROUP_DIR_MODE)
            shared = group is not None or bool(os.fstat(root).st_mode & 0o070)
            mode = GROUP_DIR_MODE if shared else PRIVATE_DIR_MODE
            for folder in L.FOLDERS:
                made = True
                try:
                    os.mkdir(folder, mode & 0o777, dir_fd=root)
                except FileExistsError:
                    made = False  # RACE: another process made it first (or it was there): checked just below
                except OSError as e:
                    raise self._named(e, "", folder) from None
                fd = self._fd(folder)  # refuses a symlink or a file
                if made or group is not None:
                    if group is not None:
                        os.fchown(fd, -1, gid)
                    os.fchmod(fd, mode)
            self.file_mode = GROUP_FILE_MODE if shared else PRIVATE_FILE_MODE
            if os.geteuid() == st.st_uid:
                self._make_lock()
        except SpoolError:
            raise
        except OSError as e:
            raise _os_error(f"cannot {'create' if create else 'use'} spool {self.root}", explain(e)) from None
        return self

    @property
    def system(self):
        """Is this a system spool (queuectl init --system)? Its root and SPOOL/system are root's
        (sysspool.is_system): the one mark every process reads, and only root can make."""
        if self._system is None:
            self._system = is_system_spool(self.root)
        return self._system

    def make_system(self):
        """Create a system spool (root only): root folder 0755, folders as sysspool.FOLDER_MODES,
        then the marker SPOOL/system. An existing spool is converted. Raises SpoolError."""
        if os.geteuid() != 0:
            raise SpoolError("only root can make a system spool")
        try:
            os.makedirs(self.root, mode=sysspool.ROOT_MODE, exist_ok=True)
            root = self._fd("")
            os.fchown(root, 0, 0)
            os.fchmod(root, sysspool.ROOT_MODE)
            for folder, mode in sysspool.FOLDER_MODES.items():
                try:
                    os.mkdir(folder, 0o700, dir_fd=root)
                except FileExistsError:
                    pass  # made before: checked (never followed) by its handle just below
                fd = self._fd(folder)
                os.fchown(fd, 0, 0)
                os.fchmod(fd, mode)
            for name, mode in (("config.json", sysspool.CONFIG_MODE), (LOCK, 0o600)):
                try:  # a spool made before: its settings become root's, readable by every enqueue
                    if stat.S_ISREG(self._lstat("", name).st_mode):
                        os.chown(name, 0, 0, dir_fd=root, follow_symlinks=False)
                        os.chmod(name, mode, dir_fd=root)  # a regular file (lstat above): nothing followed
                except FileNotFoundError:
                    pass
            try:
                self._write_file("", sysspool.MARKER, sysspool.MARKER_TEXT)
                os.chmod(sysspool.MARKER, 0o644, dir_fd=root)
            except FileExistsError:
                pass
            st = self._lstat("", sysspool.MARKER)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
                raise SpoolError(f"{self._path('', sysspool.MARKER)} is not a regular file of root's; remove it and run init --system again")
            self._fsync("")
        except OSError as e:
            raise _os_error(f"cannot create system spool {self.root}", e) from None
        self._system = None
        self.file_mode = sysspool.FILE_MODE
        return self

    def _make_lock(self):
        """Create config.json.lock with the spool's file mode, as its owner: made by whoever came
        first, its mode (0644 under umask 022) kept every other user out for good."""
        try:
            fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), self.file_mode, dir_fd=self._fd(""))
        except FileExistsError:
            return
        try:
            os.fchmod(fd, self.file_mode)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def counters_lock(self, timeout):
        """Hold SPOOL/counters.json.lock (flock), made with the spool's file mode if missing and
        opened read-only: every user who may read the spool can take it (a lock file opened for
        writing, as filelock does, would keep a group's other workers out of a 0640 file).
        Raises TimeoutError after TIMEOUT seconds."""
        import fcntl

        name = L.COUNTERS + ".lock"
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, self.file_mode, dir_fd=self._fd(""))
            os.fchmod(fd, self.file_mode)
        except FileExistsError:
            try:
                fd = os.open(name, flags, dir_fd=self._fd(""))
            except OSError as e:
                raise self._named(e, "", name) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{self._path('', name)} is not a regular file; the spool's owner should remove it")
            give_up = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        raise TimeoutError(errno.ETIMEDOUT, f"{self._path('', name)} stayed locked for {timeout:g} s") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def lock_path(self):
        """config.json.lock, checked for `config set`: a regular file this user may write, else a
        SpoolError naming it, its owner, its mode and what to do."""
        path = self.config_path + ".lock"
        try:
            st = self._lstat("", LOCK)
        except FileNotFoundError:
            if os.geteuid() not in (0, os.fstat(self._fd("")).st_uid):
                raise SpoolError(
                    f"{path} is missing and only the spool's owner makes it: settings of this spool are changed by "
                    f"{self.owner_name()} (the owner of {self.root}); ask them to run queuectl config set"
                ) from None
            self._make_lock()
            return path
        except OSError as e:
            raise _os_error("cannot check the settings lock", e) from None
        if not stat.S_ISREG(st.st_mode):
            raise SpoolError(f"{path} is {fsio.describe(st)}, not a lock file; the spool's owner ({self.owner_name()}) should remove it")
        if not os.access(LOCK, os.W_OK, dir_fd=self._fd("")):
            raise SpoolError(
                f"{path} is {fsio.describe(st)}: settings of this spool are changed by {_user_name(st.st_uid)} only; "
                f"ask {_user_name(st.st_uid)} to run queuectl config set"
            )
        return path

    # -- staging and publishing: the commit point of every rewrite -----------------------------

    def _tmp_name(self, purpose):
        return f"qc-{self.wid}-{os.urandom(6).hex()}.{purpose}"

    def _stage(self, datas, purpose="write", owners=None):
        """Write each of DATAS to a new file in tmp/ and make them all durable (one flush for the
        batch). OWNERS: per file, whose it is made (see Commit.owner), or None. Returns the names
        in tmp/; on an error none is left behind."""
        paths, fds = [], []
        try:
            for i, data in enumerate(datas):
                path = self._tmp_name(purpose)
                fds.append(self._create("tmp", path))
                paths.append(path)
                self._give(fds[-1], owners[i] if owners else None)
                fsio.write_all(fds[-1], data)
            fsio.flush(fds)
        except BaseException:
            for path in paths:
                self._unlink_quiet("tmp", path)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        return paths

    def _give(self, fd, owner):
        """Make the new file FD OWNER's before anything is in it (see Commit.owner): a (uid, gid)
        keeps its mode; a sysspool.Owner also gets mode 0600, since every file a system spool's
        root worker writes for a job (its next version, its log) is its owner's alone."""
        if owner is None:
            return
        if not isinstance(owner, sysspool.Owner):  # (uid, gid)
            os.fchown(fd, *owner)
        elif os.geteuid() == 0:
            os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, sysspool.FILE_MODE)

    def _publish(self, moves):
        """Rename each staged (tmp name, folder, name) into place, then fsync each folder once.

        On an error the staged files not yet renamed are removed; those renamed stay published."""
        done = 0
        try:
            for tmp, folder, name in moves:
                self._rename("tmp", tmp, folder, name)
                done += 1
            for folder in dict.fromkeys(folder for _, folder, _ in moves):
                self._fsync(folder)
        except OSError:
            for tmp, _, _ in moves[done:]:
                self._unlink_quiet("tmp", tmp)
            raise

    # -- enqueue (transition 1) ----------------------------------------------------------------

    def reserve_id(self, job_id, token):
        """Take ids/ID atomically (it fails if the id is taken: then False), for enqueue and
        adoption alike: a symlink whose target is TOKEN. symlink(2) fails if the name exists, is
        complete when it appears, and a target this short lives in the inode (no data block, and
        the job file keeps its single link). It is read with readlink, never followed."""
        try:
            os.symlink(token, job_id, dir_fd=self._fd("ids"))
        except FileExistsError:
            return False
        return True

    def reservation(self, job_id):
        """The token that holds ID, or None. ('' for a reservation that cannot be read.)
        Older spools' forms still read: a hard link to the job as enqueued, a file holding the token."""
        try:
            return os.readlink(job_id, dir_fd=self._fd("ids"))
        except FileNotFoundError:
            return None  # RACE: an enqueue that failed gave the id back meanwhile: it is free
        except OSError:
            pass  # EINVAL: not a symlink, an older reservation
        try:
            data = self._read("ids", job_id, 1 << 30)
        except FileNotFoundError:
            return None  # RACE: an enqueue that failed gave the id back meanwhile: it is free
        except (OSError, JobInvalid):
            return ""
        if data.startswith(b"{"):  # a link to the job as it was enqueued
            try:
                return str(jobdoc.parse_bytes(data).get("token") or "")
            except JobInvalid:
                return ""
        return data.decode("ascii", "replace")

    def enqueue(self, accepted):
        """Store accepted jobs [(job, not_before)] with one flush for all (transition 1).

        Returns a list with, per job, its id or the QueuectlError that refused it.
        """
        try:
            staged = self._stage([jobdoc.dumps(job) for job, _ in accepted], "enqueue")
        except OSError as e:
            raise _os_error("cannot store the job", e) from None
        results, moves = [], []
        try:
            for tmp, (job, nb) in zip(staged, accepted):
                if self.reserve_id(job["id"], job["token"]):
                    moves.append((tmp, "pending", L.pending_name(nb, job["id"])))
                    results.append(job["id"])
                else:
                    self._unlink_quiet("tmp", tmp)
                    results.append(DuplicateId(f"a job with id {job['id']!r} already exists"))
            if moves:
                self._fsync("ids")
                self._publish(moves)
        except OSError as e:
            for tmp, (job, nb) in zip(staged, accepted):
                self._unlink_quiet("tmp", tmp)
                if not self._lexists("pending", L.pending_name(nb, job["id"])):
                    if self.reservation(job["id"]) == job["token"]:  # not stored: give its id back
                        self._unlink_quiet("ids", job["id"])
            raise _os_error("cannot store the job", e) from None
        return results

    # -- reading --------------------------------------------------------------------------------

    def read(self, folder, name, max_bytes=1 << 30, owners=None):
        """Parse and validate FOLDER/NAME. Raises JobInvalid, FileNotFoundError."""
        return jobdoc.validate(jobdoc.parse_bytes(self._read(folder, name, max_bytes, owners)))

    def read_with_stat(self, folder, name, max_bytes=1 << 30):
        """(job, fstat) of FOLDER/NAME: the owner of the very file whose content was read."""
        try:
            data, st = fsio.read_regular_stat(name, max_bytes, dir_fd=self._fd(folder))
        except OSError as e:
            raise self._named(e, folder, name) from None
        return jobdoc.validate(jobdoc.parse_bytes(data)), st

    def read_claim(self, claim, max_bytes=1 << 30, owners=None):
        return self.read("processing", claim.name, max_bytes, owners)

    def read_obeyed(self, claim, max_bytes, owners=None):
        """Read a claimed job about to be obeyed (run, adopted, recovered, revived): (job, the
        sysspool.Owner it is carried for, or None). The one place the system spool's mode is
        decided for a job: there, the owner comes from the fstat of the very file read, after
        sysspool.admit; elsewhere, OWNERS (trusted uids) decide as in read()."""
        if not self.system:
            return self.read_claim(claim, max_bytes, owners), None
        for _ in range(20):
            try:
                data, who = fsio.read_checked(claim.name, max_bytes, lambda st: sysspool.admit(st, max_bytes), dir_fd=self._fd("processing"))
                return jobdoc.validate(jobdoc.parse_bytes(data)), who
            except JobInvalid as e:
                if "hard links" not in str(e):
                    raise
                error = e
            # a put-back or release links the file back, then removes its claim: a moment with two
            # links. A file that keeps its second name is refused.
            time.sleep(0.01)
        raise error

    def job_owner(self, folder, name):
        """The uid that owns FOLDER/NAME (FileNotFoundError when it is gone)."""
        return self._lstat(folder, name).st_uid

    def check_mine(self, job_id, folder, name):
        """In a system spool, a user acts only on their own jobs: raise NotYours for another's."""
        if not self.system or os.geteuid() == 0:
            return
        uid = self.job_owner(folder, name)
        if uid != os.geteuid():
            raise NotYours(f"job {job_id} belongs to {sysspool.describe(uid)}; only they (or root) may see or act on it")

    def listdir(self, folder):
        try:
            return self._listdir(folder)
        except FileNotFoundError:
            return []

    def stat(self, folder, name):
        """lstat of FOLDER/NAME (FileNotFoundError when it is gone)."""
        return self._lstat(folder, name)

    def folder_path(self, folder):
        """The path of a spool folder, for watching it (never for building names in it)."""
        return self._dir(folder)

    def has_writer(self, name):
        """Does a process still have pending/NAME open for writing? (see fsio.has_writer)"""
        return fsio.has_writer(name, dir_fd=self._fd("pending"))

    # -- claims: the rename is the lock ---------------------------------------------------------

    def take(self, op, origin):
        """Claim ORIGIN (a name in OP's source folder) for this process: the Claim, or None when
        another process won the rename. Raises OSError(ENAMETOOLONG) when the claim's name
        would not fit (see reject_long_name)."""
        claim = L.parse_claim(L.claim_name(op, origin, self.wid))
        try:
            self._rename(L.BY_OP[op].source, origin, "processing", claim.name)
        except FileNotFoundError:
            return None  # RACE: another worker or command claimed it first; it is theirs
        return claim

    def take_over(self, claim):
        """Steal CLAIM from its dead holder (recovery): the new Claim, or None if another
        recovering process stole it first."""
        mine = L.parse_claim(L.claim_name(claim.op, claim.origin, self.wid))
        try:
            self._rename("processing", claim.name, "processing", mine.name)
        except FileNotFoundError:
            return None  # RACE: another recovering worker took it over first; it is theirs
        return mine

    def claims(self):
        """[Claim] for every claim in processing/."""
        return [c for c in map(L.parse_claim, self.listdir("processing")) if c is not None]

    def claimed_at(self, claim):
        """When CLAIM was taken (its ctime: the rename), or None if it is gone."""
        try:
            return self.stat("processing", claim.name).st_ctime
        except FileNotFoundError:
            return None  # RACE: its holder finished, or another worker took it over

    def put_back(self, claim):
        """Return a claimed file unchanged to where it was claimed from (the claim did not count).

        Never replaces a file there (a drop-in's name may have been reused meanwhile: then
        NAME.1, ...). Durable in the source folder before the claim goes. Returns the name."""
        return self._link_no_replace("processing", claim.name, L.BY_OP[claim.op].source, claim.origin)

    def drop(self, claim):
        """Remove a claim whose transition has committed elsewhere (a stale copy)."""
        self._unlink_quiet("processing", claim.name)

    def finish(self, claim, job, not_before=None, *, hold=False, owner=None):
        """Write JOB to the folder its state names, in place of CLAIM (transitions 2, 5-9, 11-14);
        OWNER: whose the new version is (see Commit.owner).

        Returns (folder, name), or None when the claim had been taken over (see commit)."""
        c = Commit(claim, job, not_before, hold=hold, owner=owner)
        try:
            self.commit([c])
        except OSError:
            if c.fence is None and c.staged is not None:  # back as it was: the claim holds the job
                self._unlink_quiet("tmp", c.staged)
            raise
        return c.dest if c.outcome == PUBLISHED else None

    def commit(self, items):
        """Publish a batch of Commits, sharing the flushes. Each ends PUBLISHED, or TAKEN_OVER when
        its claim was no longer ours: a holder that was thought lost (frozen past its lease) never
        publishes over the one that recovered its job.

        Per item: the new content is staged in tmp/ (durable); the claim is renamed to the
        stage's `.fence` in tmp/ -- the fence: this rename fails if recovery took the claim over,
        and once it succeeds nobody else can take it -- then the stage is renamed into place.
        Once every destination folder is fsynced, the fences (the old copies) are removed.

        A destination that refuses its item (full disk, permissions) does not hold back the
        others; the first such OSError is raised at the end. Idempotent: the items published stay
        published, the others keep their stage and claim, and calling commit again with the same
        items goes on from there."""
        todo = [c for c in items if c.outcome is None]
        fresh = [c for c in todo if c.staged is None]
        for c, path in zip(fresh, self._stage([jobdoc.dumps(c.job) for c in fresh], owners=[c.owner for c in fresh])):
            c.staged, c.dest = path, _destination(c.job, c.not_before, c.hold)
        published, error = [], None
        try:
            for c in todo:
                if not self._fence(c):
                    continue
                try:
                    self._rename("tmp", c.staged, *c.dest)
                except FileNotFoundError:
                    pass  # RACE: we were frozen after the fence and recovery published our stage: done
                except OSError as e:  # this destination refuses it; the others may not
                    self._unfence(c)
                    error = error or e
                    continue
                c.outcome = PUBLISHED
                published.append(c)
        finally:
            for folder in dict.fromkeys(c.dest[0] for c in published):
                self._fsync(folder)
            for c in published:
                self._unlink_quiet("tmp", c.fence)
        if error is not None:
            raise error

    def _fence(self, c):
        """Move C's claim out of reach of recovery; False (and the stage dropped) if it was taken."""
        if c.fence is not None:
            return True  # fenced by an earlier try whose publish failed
        fence = c.staged.rpartition(".")[0] + ".fence"
        try:
            self._rename("processing", c.claim.name, "tmp", fence)
        except FileNotFoundError:  # RACE: recovery took the claim over: the job is its holder's now
            self._unlink_quiet("tmp", c.staged)
            c.outcome = TAKEN_OVER
            return False
        c.fence = fence
        return True

    def _unfence(self, c):
        """Put C's claim back after a failed publish, so that the job stays visible meanwhile."""
        try:
            self._rename("tmp", c.fence, "processing", c.claim.name)
            c.fence = None
        except OSError:
            pass  # it stays fenced: the next commit publishes from there

    # -- rejected/ (transition 3) ---------------------------------------------------------------

    def _link_unique(self, sf, sn, folder, name):
        try:
            return fsio.link_unique(sn, self._fd(sf), self._fd(folder), name)
        except OSError as e:
            raise self._named(e, sf, sn, folder, name) from None

    def _link_no_replace(self, sf, sn, folder, name):
        """Move SF/SN to FOLDER/NAME (or NAME.N), durable in FOLDER before SN goes. Returns the name."""
        name = self._link_unique(sf, sn, folder, name)
        self._fsync(folder)
        self._unlink_quiet(sf, sn)
        return name

    def rejected_as(self, claim):
        """The name under which rejected/ already holds the very file of CLAIM, or None: an
        interrupted rejection had committed."""
        try:
            return fsio.name_of_same_file(claim.name, self._fd("processing"), self._fd("rejected"), claim.origin)
        except OSError as e:
            raise self._named(e, "processing", claim.name) from None

    def reject(self, claim, reason, now):
        """Move a claimed bad file to rejected/ under its own name, with NAME.reason beside it.

        Order: link into rejected/, write the reason, fsync rejected/, drop the claim. A crash in
        between leaves the claim, and recovery finishes the rejection (see rejected_as)."""
        name = self.rejected_as(claim)
        if name is None:
            name = self._link_unique("processing", claim.name, "rejected", claim.origin)
        self._write_reason(name, reason, now)
        self._fsync("rejected")
        self._unlink_quiet("processing", claim.name)
        return name

    def _write_reason(self, name, reason, now):
        try:
            self._write_file("rejected", name + L.REASON_SUFFIX, f"{iso(now)} {reason}\n".encode(), sync=False)
        except FileExistsError:
            pass  # RACE: a recovering worker finished the same rejection; the reason is there
        if self.system and os.geteuid() == 0:
            self._give_reason(name)

    def _give_reason(self, name):
        """In a system spool, NAME.reason is the rejected file's owner's (0600), so that they can
        read why (`list --state rejected`); only root writes in rejected/."""
        try:
            uid = self.stat("rejected", name).st_uid
            os.chown(name + L.REASON_SUFFIX, uid, -1, dir_fd=self._fd("rejected"), follow_symlinks=False)
        except OSError:
            pass  # the reason stays root's: the rejection stands all the same

    def reject_tmp(self, name, reason, now):
        name = self._link_no_replace("tmp", name, "rejected", name)
        self._write_reason(name, reason, now)
        return name

    def reject_long_name(self, name, now):
        """Reject pending/NAME whose name is too long to carry a claim suffix.

        The file keeps its bytes but gets a shorter name (unique while it exists: the inode number);
        the reason file records the full original name. None if another process moved it first.
        """
        try:
            short = f"{name[:150]}...{self.stat('pending', name).st_ino}"
            self._rename("pending", name, "rejected", short)
        except FileNotFoundError:
            return None  # RACE: another worker rejected it first
        self._write_reason(short, f"file name too long for the spool ({len(os.fsencode(name))} bytes); original name: {name!r}", now)
        self._fsync("rejected")
        return short

    def rejected(self):
        """[(name, reason text or None)] of rejected files (reason files themselves excluded)."""
        names = set(self.listdir("rejected"))
        out = []
        for name in sorted(names):
            if name.endswith(L.REASON_SUFFIX) and name[: -len(L.REASON_SUFFIX)] in names:
                continue
            reason = None
            if name + L.REASON_SUFFIX in names:
                try:
                    reason = self._read("rejected", name + L.REASON_SUFFIX, 1 << 16).decode("utf-8", "replace").strip()
                except (OSError, JobInvalid):
                    pass
            out.append((name, reason))
        return out

    # -- finding a job by id --------------------------------------------------------------------

    def locate(self, job_id, include_processing=True):
        """Where job ID is: (folder, name, Claim or None), or None. O(1) for done/ and dead/."""
        for folder in L.FINAL_FOLDERS:
            if self._lexists(folder, L.final_name(job_id)):
                return folder, L.final_name(job_id), None
        if include_processing:
            for claim in self.claims():
                if claim.job_id == job_id:
                    return "processing", claim.name, claim
        for folder in ("pending", "held"):
            for name in self.listdir(folder):
                if L.parse_pending(name)[1] == job_id:
                    return folder, name, None
        return None

    def final_folder(self, job_id):
        """"done" or "dead" when job ID is there, else None: two lookups, whatever the spool holds."""
        if not jobdoc.valid_id(job_id):
            return None
        for folder in L.FINAL_FOLDERS:
            if self._lexists(folder, L.final_name(job_id)):
                return folder
        return None

    def load(self, job_id):
        """(folder, name, Claim or None, job) for ID. Raises NotFound."""
        for _ in range(2):
            where = self.locate(job_id) if jobdoc.valid_id(job_id) else None
            if where is None:
                break
            try:
                self.check_mine(job_id, where[0], where[1])
                return where + (self.read(where[0], where[1], 1 << 30),)
            except FileNotFoundError:
                continue  # RACE: it moved on to its next state while we looked: look once more
        raise NotFound(f"no job with id {job_id!r}")

    # -- logs -----------------------------------------------------------------------------------

    def open_log(self, job_id, seq, owner=None):
        """Open logs/ID.SEQ.log for appending; a planted file or symlink there is replaced, not
        followed. OWNER: whose the log is (a system spool's job run as its owner)."""
        name = L.log_name(job_id, seq)
        try:
            fd = self._create("logs", name, append=True)
        except FileExistsError:
            self._unlink("logs", name)
            fd = self._create("logs", name, append=True)
        try:
            self._give(fd, owner)
        except OSError:
            os.close(fd)
            raise
        return fd

    def logs_writable(self):
        return os.access(".", os.W_OK, dir_fd=self._fd("logs"))

    def read_log(self, name, offset=0):
        """The bytes of logs/NAME from OFFSET on, or None when there is none. NAME comes from a job
        file: only a log's name is looked up, never a path."""
        if not L.LOG_RE.match(name):
            return None
        try:
            fd, _ = fsio.open_regular(name, dir_fd=self._fd("logs"))
        except FileNotFoundError:
            return None
        except fsio.NotRegular as e:
            raise SpoolError(f"{self._path('logs', name)} is {e.describe()}, not a log; remove it") from None
        with os.fdopen(fd, "rb") as f:
            if offset:
                f.seek(offset)
            return f.read()

    # -- workers/ -------------------------------------------------------------------------------

    def worker_ids(self):
        out = []
        for name in self.listdir("workers"):
            parsed = L.parse_heartbeat(name)
            if parsed and not parsed[1]:
                out.append(parsed[0])
        return out

    def write_heartbeat(self, wid, data):
        """Replace workers/WID.json (not fsynced: a heartbeat is only as good as its mtime)."""
        tmp = f".{wid}.{os.urandom(3).hex()}.tmp"
        self._write_file("workers", tmp, data, sync=False)
        self._rename("workers", tmp, "workers", L.heartbeat_name(wid))

    def read_heartbeat(self, wid):
        """The JSON object in workers/WID.json, or None (gone, being replaced, or not a heartbeat)."""
        import json

        try:
            data = json.loads(self._read("workers", L.heartbeat_name(wid), 1 << 16))
        except (OSError, ValueError, JobInvalid):
            return None
        return data if isinstance(data, dict) else None

    def heartbeat_leftovers(self):
        """[(name, worker id)] of heartbeat temporary files (a worker died while writing one)."""
        out = []
        for name in self.listdir("workers"):
            parsed = L.parse_heartbeat(name)
            if parsed and parsed[1]:
                out.append((name, parsed[0]))
        return out

    def drop_heartbeat_leftover(self, name):
        self._unlink_quiet("workers", name)

    def remove_heartbeat(self, wid):
        self._unlink_quiet("workers", L.heartbeat_name(wid))

    def fs_now(self, fallback):
        """The spool's file-system clock now: the mtime of this process's heartbeat, touched. Ages
        of heartbeats, claims and tmp/ files (mtimes and ctimes set by that clock, perhaps on
        another host's behalf) are judged against it, never against this host's clock."""
        name = L.heartbeat_name(self.wid)
        try:
            os.utime(name, None, dir_fd=self._fd("workers"), follow_symlinks=False)
            return self._lstat("workers", name).st_mtime
        except OSError:
            return fallback  # no heartbeat of ours (a CLI command): this host's clock it is

    def heartbeat_mtime(self, wid):
        try:
            return self._lstat("workers", L.heartbeat_name(wid)).st_mtime
        except OSError:
            return None

    def heartbeat_with_owner(self, wid):
        """(uid, JSON object) of workers/WID.json, both from the one file read (fstat), or None:
        recovery's proof that a live process is the worker holding a claim (recovery.claim_is_lost)."""
        import json

        try:
            fd = os.open(L.heartbeat_name(wid), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=self._fd("workers"))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            data = json.loads(os.read(fd, 1 << 20))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        return (st.st_uid, data) if isinstance(data, dict) else None

    def heartbeat_owner(self, wid):
        """The uid that wrote workers/WID.json (the worker's user), or None."""
        try:
            return self._lstat("workers", L.heartbeat_name(wid)).st_uid
        except OSError:
            return None

    # -- SPOOL/counters.json: totals of ended attempts (counters.py; written under its lock) ------

    def read_counters(self):
        """The JSON object in SPOOL/counters.json; {} when there is none (or it is not one)."""
        import json

        try:
            data = json.loads(self._read("", L.COUNTERS, 1 << 20))
        except FileNotFoundError:
            return {}
        except (ValueError, JobInvalid):
            return {}  # made by hand, or not by queuectl: counted from zero again
        return data if isinstance(data, dict) else {}

    def write_counters(self, data):
        """Replace SPOOL/counters.json with DATA (a dict) atomically and durably."""
        import json

        fsio.write_atomic(os.path.join(self.root, L.COUNTERS), json.dumps(data, sort_keys=True).encode(), self.file_mode)

    # -- the spool-wide pause: SPOOL/paused ------------------------------------------------------

    def pause(self, data):
        """Create SPOOL/paused holding DATA (bytes), atomically and durably: staged in tmp/, then
        linked into place (the commit point; a link never replaces a pause already there).
        True if this call paused the spool, False if it was paused already."""
        tmp = self._stage([data])[0]
        try:
            self._link("tmp", tmp, "", L.PAUSED)
        except FileExistsError:
            return False  # RACE: paused already, perhaps by another `queuectl pause` just now
        finally:
            self._unlink_quiet("tmp", tmp)
        self._fsync("")
        return True

    def resume(self):
        """Remove SPOOL/paused: True if it was there."""
        try:
            self._unlink("", L.PAUSED)
        except FileNotFoundError:
            return False  # RACE: not paused, or another `queuectl resume` removed it first
        self._fsync("")
        return True

    def paused(self):
        """Is the spool paused? One lstat (workers ask before they claim). Raises OSError when
        that cannot be told (the spool's root unreadable)."""
        try:
            self._lstat("", L.PAUSED)
        except FileNotFoundError:
            return False
        return True

    def pause_info(self):
        """The JSON object in SPOOL/paused, or None when the spool is not paused. The file's
        presence is the pause: a file that is not such an object (made by hand) reads as {}
        with `since` its mtime."""
        import json

        try:
            st = self._lstat("", L.PAUSED)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(self._read("", L.PAUSED, 1 << 16))
        except FileNotFoundError:
            return None  # RACE: resumed while we looked
        except (OSError, ValueError, JobInvalid):
            data = None
        if not isinstance(data, dict):
            data = {}
        data.setdefault("since", iso(st.st_mtime))
        return data

    # -- retention and purge (transition 17) ----------------------------------------------------
    # Small and separate: each is one file-system step on one folder.

    def scan(self, folder):
        """Yield (name, inode, mtime) of FOLDER's entries, one directory read at a time: a caller
        may stop anywhere and resume later (a worker's retention step looks at a few per turn)."""
        try:  # a new open of the folder: a scan's offset is its own (as _listdir)
            fd = os.open(".", _DIR_FLAGS, dir_fd=self._fd(folder))
        except FileNotFoundError:
            return
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # RACE: moved on (a dlq retry, another purger) since the read
                    yield entry.name, st.st_ino, st.st_mtime
        finally:
            os.close(fd)

    def entry_stat(self, folder, name):
        """lstat of FOLDER/NAME, or None when it is not there."""
        try:
            return self._lstat(folder, name)
        except FileNotFoundError:
            return None

    def expire(self, folder, name, ino):
        """Take FOLDER/NAME (done/ or dead/) out of the spool for removal: a rename to
        tmp/qc-WORKER-HEX.purge, the commit point of a purge. Returns the tmp name, or None when
        another process moved it first, or when it is no longer the file scanned (inode INO)."""
        tmp = self._tmp_name("purge")
        try:
            self._rename(folder, name, "tmp", tmp)
        except FileNotFoundError:
            return None  # RACE: a dlq retry or another purger took it first: theirs
        if self._lstat("tmp", tmp).st_ino != ino:  # RACE: a newer version came since the scan: not old
            self._rename("tmp", tmp, folder, name)
            return None
        return tmp

    def read_expired(self, name, max_bytes=1 << 30):
        """The job in tmp/NAME (a `.purge` file). Raises JobInvalid, FileNotFoundError."""
        return self.read("tmp", name, max_bytes)

    def leftovers(self, job_id, token, attempts):
        """[(folder, name, lstat)] of what job ID owns besides its file: the log of each of its
        ATTEMPTS (those that printed something), and ids/ID while it names TOKEN (a later job
        may hold the id already)."""
        out = []
        for seq in range(1, attempts + 1):
            st = self.entry_stat("logs", L.log_name(job_id, seq))
            if st is not None:
                out.append(("logs", L.log_name(job_id, seq), st))
        if token and self.reservation(job_id) == token:
            st = self.entry_stat("ids", job_id)
            if st is not None:
                out.append(("ids", job_id, st))
        return out

    def remove(self, files):
        """Unlink each (folder, name) of FILES (whatever it is: file, hard link, symlink), then
        fsync ids/ and rejected/ once if it removed anything there. Gone already: fine."""
        for folder, name in files:
            self._unlink_quiet(folder, name)
        for folder in dict.fromkeys(f for f, _ in files if f in ("ids", "rejected")):
            self._fsync(folder)

    def sync(self, folders):
        """fsync each of FOLDERS once (a batch of expire()s is durable before ids are freed)."""
        for folder in folders:
            self._fsync(folder)

    # -- held/ and due now: renames of a waiting job, its content unchanged ----------------------

    def _move_waiting(self, folder, name, dest_folder, dest_name):
        """Rename FOLDER/NAME to DEST_FOLDER/DEST_NAME (the commit point) and make it durable.
        False when the file was gone: another process (a worker's claim) moved it first."""
        try:
            self._rename(folder, name, dest_folder, dest_name)
        except FileNotFoundError:
            return False  # RACE: a worker claimed it, or another command moved it first
        self._fsync(dest_folder)
        return True

    def hold(self, name):
        """pending/NAME -> held/NAME (`queuectl hold`): no worker claims it there."""
        return self._move_waiting("pending", name, "held", name)

    def unhold(self, name):
        """held/NAME -> pending/NAME (`queuectl release`): its not-before kept (due if past)."""
        return self._move_waiting("held", name, "pending", name)

    def make_due(self, folder, name, now):
        """FOLDER/NAME (pending/ or held/) -> pending/ under NOW (`queuectl retry`). The new name,
        or None when another process moved the file first."""
        dest = L.pending_name(now, L.parse_pending(name)[1])
        return dest if self._move_waiting(folder, name, "pending", dest) else None

    # -- requests/: what a command asks of the worker that runs a job ----------------------------

    def request(self, job_id, kind, data):
        """Create requests/ID.KIND holding DATA (bytes): staged, then linked (a link never
        replaces a request already there). True if this call made it, False if it was there."""
        tmp = self._stage([data])[0]
        try:
            self._link("tmp", tmp, "requests", L.request_name(job_id, kind))
        except FileExistsError:
            return False  # RACE: another command asked the same first; one request will do
        finally:
            self._unlink_quiet("tmp", tmp)
        self._fsync("requests")
        return True

    def requested(self, job_id, kind, owner=None):
        """Is there a request KIND for job ID? One lstat (a running job's worker asks on each wake).
        In a system spool, where every user may write in requests/, a request for a job run as
        OWNER (a sysspool.Owner) counts only if that user or root made it."""
        try:
            st = self._lstat("requests", L.request_name(job_id, kind))
        except FileNotFoundError:
            return False
        return not (self.system and owner is not None) or st.st_uid in (0, owner.uid)

    def requests(self):
        """[(id, kind)] of the requests in requests/."""
        return [r for r in map(L.parse_request, self.listdir("requests")) if r is not None]

    def drop_request(self, job_id, kind):
        self._unlink_quiet("requests", L.request_name(job_id, kind))

    def drop_requests(self, job_id):
        """Remove every request for job ID: its job has reached a state they no longer apply to."""
        for kind in L.REQUEST_KINDS:
            self.drop_request(job_id, kind)

    # -- tmp/ -----------------------------------------------------------------------------------

    def tmp_files(self):
        """[(name, owner worker id or None, purpose or None, mtime)] of files in tmp/, fences
        first (a fence says what to do with the stage beside it)."""
        out = []
        for name in self.listdir("tmp"):
            try:
                mtime = self.stat("tmp", name).st_mtime
            except FileNotFoundError:
                continue  # RACE: its writer renamed it into pending/ meanwhile
            m = L.TMP_RE.match(name)
            out.append((name, m.group(1) if m else None, m.group(3) if m else None, mtime))
        out.sort(key=lambda t: t[2] != "fence")
        return out

    def stage_of(self, fence):
        """The name of the stage a fence in tmp/ belongs to, if it is still there."""
        name = fence.rpartition(".")[0] + ".write"
        return name if self._lexists("tmp", name) else None

    def roll_forward(self, name, job, not_before=None, hold=False):
        """Publish a complete job left in tmp/ by a dead process: an interrupted enqueue (its id
        reserved), or a commit that died between its fence and its publish."""
        if not_before is None:
            not_before = parse_iso(job.get("run_at") or job["created_at"])
        folder, dest = _destination(job, not_before, hold)
        self._rename("tmp", name, folder, dest)
        self._fsync(folder)

    def drop_tmp(self, name):
        self._unlink_quiet("tmp", name)

    # -- worker.log: each user's pool its own, rotated -------------------------------------------

    @property
    def worker_log_name(self):
        """worker.log for the workers of the spool's owner, worker.USER.log for another user's:
        each user can read and write their own, whatever the others did."""
        uid = os.geteuid()
        try:
            if os.fstat(self._fd("")).st_uid == uid:
                return "worker.log"
        except OSError:
            return "worker.log"
        name = _user_name(uid)
        return f"worker.{name if L.valid_id(name) else uid}.log"

    @property
    def worker_log(self):
        """The path of this user's worker log (for messages: `see LOG`)."""
        return self._path("", self.worker_log_name)

    def open_worker_log(self):
        """An fd appending to this user's worker log, made with the spool's file mode. Anything
        but a regular file of this user's there is refused (OSError naming it, whose, and what to do)."""
        name = self.worker_log_name
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, self.file_mode, dir_fd=self._fd(""))
                os.fchmod(fd, self.file_mode)
            except FileExistsError:
                fd = os.open(name, flags, dir_fd=self._fd(""))
        except OSError as e:
            raise explain(self._named(e, "", name)) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise OSError(errno.EPERM, f"it is {fsio.describe(st)}, not a log of this user's; remove it (or ask its owner to)", self._path("", name))
        return fd

    def rotate_worker_log(self, fd, cap):
        """Called before a line is written to FD, this process's worker log: a new fd to write to
        when the log was rotated (by another process of the pool, or now: it had reached CAP
        bytes and became NAME.1, replacing the one before), else None."""
        name = self.worker_log_name
        st = os.fstat(fd)
        try:
            cur = self._lstat("", name)
        except FileNotFoundError:
            cur = None
        if cur is not None and _ident(cur) == _ident(st):
            if st.st_size < cap:
                return None
            import fcntl

            try:  # an open file description of our own: the pool's processes share FD's, and flock with it
                lock = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=self._fd(""))
            except FileNotFoundError:
                lock = None  # RACE: another process of the pool is rotating it: reopen below
            if lock is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    held = os.fstat(lock)
                    if _ident(held) == _ident(st) == _ident(self._lstat("", name)):
                        self._rename("", name, "", name + ".1")
                finally:
                    os.close(lock)
        return self.open_worker_log()


def _ident(st):
    return st.st_dev, st.st_ino
