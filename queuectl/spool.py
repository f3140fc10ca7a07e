"""The spool protocol: every path, rename, link and unlink in the spool happens here, following
the tables of layout.py (spool_layout.md). Other modules ask this one; none joins a spool path.

Concurrency: any number of processes act on one spool at once. A file that another process may
move under us is marked `RACE:`: who moved it, and why going on is safe.
"""

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
    return SpoolError(f"{action}: {e.strerror or e} ({e.filename or ''})".replace(" ()", ""))


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
        self.worker_log = os.path.join(self.root, "worker.log")
        self.pause_path = os.path.join(self.root, L.PAUSED)
        self.counters_lock_path = os.path.join(self.root, L.COUNTERS + ".lock")
        self._wid = None
        self._system = None
        self.file_mode = 0o600  # 0660 in a spool shared with a group (see ensure)

    @property
    def wid(self):
        """This process's worker id (host.pid.start.nNS); recomputed after a fork."""
        if self._wid is None or self._wid_pid != os.getpid():
            self._wid, self._wid_pid = worker_id(), os.getpid()
        return self._wid

    def _dir(self, folder):
        return os.path.join(self.root, folder)

    def _path(self, folder, name):
        return os.path.join(self.root, folder, name)

    def ensure(self, group=None, create=True):
        """Create the spool and its folders if missing (0700; with GROUP: 2770, shared with it).

        Without CREATE the spool's root must exist (a mistyped or unmounted --spool is not made
        silently): its missing folders are still made (an older or half-made spool).
        A spool folder that is a symlink is refused: it could send writes outside the spool.
        Raises SpoolError.
        """
        mode = 0o2770 if group is not None else 0o700
        if not create and not os.path.isdir(self.root):
            raise SpoolError(f"no spool at {self.root}; create it with queuectl init")
        if self.system:
            self.file_mode = sysspool.FILE_MODE
            return self  # made by root (make_system): nobody else may add to it
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            paths = [self.root] + [self._dir(d) for d in L.FOLDERS]
            for path in paths[1:]:
                try:
                    os.mkdir(path, mode & 0o777)
                except FileExistsError:
                    pass  # RACE: another process made it first (or it was there): checked just below
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise SpoolError(f"{path} is not a folder ({fsio.kind(st.st_mode)}); refusing to use it")
            if group is not None:
                gid = _gid(group)
                for path in paths:
                    os.chown(path, -1, gid)
                    os.chmod(path, mode)
            self.file_mode = 0o660 if os.stat(self.root).st_mode & 0o070 else 0o600
        except OSError as e:
            raise _os_error(f"cannot create spool {self.root}", e) from None
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
            st = os.lstat(self.root)
            if not stat.S_ISDIR(st.st_mode):
                raise SpoolError(f"{self.root} is not a folder ({fsio.kind(st.st_mode)}); refusing to use it")
            os.chown(self.root, 0, 0)
            os.chmod(self.root, sysspool.ROOT_MODE)
            for folder, mode in sysspool.FOLDER_MODES.items():
                path = self._dir(folder)
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    pass
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise SpoolError(f"{path} is not a folder ({fsio.kind(st.st_mode)}); refusing to use it")
                os.chown(path, 0, 0)
                os.chmod(path, mode)
            for name, mode in (("config.json", sysspool.CONFIG_MODE), ("config.json.lock", 0o600)):
                try:  # a spool made before: its settings become root's, readable by every enqueue
                    path = os.path.join(self.root, name)
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        os.chown(path, 0, 0)
                        os.chmod(path, mode)
                except FileNotFoundError:
                    pass
            marker = os.path.join(self.root, sysspool.MARKER)
            try:
                fsio.write_file(marker, sysspool.MARKER_TEXT, 0o644)
            except FileExistsError:
                pass
            st = os.lstat(marker)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
                raise SpoolError(f"{marker} is not a regular file of root's; remove it and run init --system again")
            fsio.fsync_dir(self.root)
        except OSError as e:
            raise _os_error(f"cannot create system spool {self.root}", e) from None
        self._system = None
        self.file_mode = sysspool.FILE_MODE
        return self

    # -- staging and publishing: the commit point of every rewrite -----------------------------

    def _tmp_path(self, purpose):
        return self._path("tmp", f"qc-{self.wid}-{os.urandom(6).hex()}.{purpose}")

    def _stage(self, datas, purpose="write", owners=None):
        """Write each of DATAS to a new file in tmp/ and make them all durable (one flush for the
        batch). OWNERS: per file, whose it is made (see Commit.owner), or None. Returns the tmp
        paths; on an error none is left behind."""
        paths, fds = [], []
        try:
            for i, data in enumerate(datas):
                path = self._tmp_path(purpose)
                fds.append(fsio.create(path, self.file_mode))
                paths.append(path)
                self._give(fds[-1], owners[i] if owners else None)
                fsio.write_all(fds[-1], data)
            fsio.flush(fds)
        except BaseException:
            for path in paths:
                fsio.unlink_quiet(path)
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
        """Rename each staged (tmp path, folder, name) into place, then fsync each folder once.

        On an error the staged files not yet renamed are removed; those renamed stay published."""
        done = 0
        try:
            for tmp, folder, name in moves:
                os.rename(tmp, self._path(folder, name))
                done += 1
            for folder in dict.fromkeys(folder for _, folder, _ in moves):
                fsio.fsync_dir(self._dir(folder))
        except OSError:
            for tmp, _, _ in moves[done:]:
                fsio.unlink_quiet(tmp)
            raise

    # -- enqueue (transition 1) ----------------------------------------------------------------

    def reserve_id(self, job_id, token):
        """Take ids/ID atomically (it fails if the id is taken: then False), for enqueue and
        adoption alike: a symlink whose target is TOKEN. symlink(2) fails if the name exists, is
        complete when it appears, and a target this short lives in the inode (no data block, and
        the job file keeps its single link). It is read with readlink, never followed."""
        try:
            os.symlink(token, self._path("ids", job_id))
        except FileExistsError:
            return False
        return True

    def reservation(self, job_id):
        """The token that holds ID, or None. ('' for a reservation that cannot be read.)
        Older spools' forms still read: a hard link to the job as enqueued, a file holding the token."""
        try:
            return os.readlink(self._path("ids", job_id))
        except FileNotFoundError:
            return None  # RACE: an enqueue that failed gave the id back meanwhile: it is free
        except OSError:
            pass  # EINVAL: not a symlink, an older reservation
        try:
            data = fsio.read_regular(self._path("ids", job_id), 1 << 30)
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
                    fsio.unlink_quiet(tmp)
                    results.append(DuplicateId(f"a job with id {job['id']!r} already exists"))
            if moves:
                fsio.fsync_dir(self._dir("ids"))
                self._publish(moves)
        except OSError as e:
            for tmp, (job, nb) in zip(staged, accepted):
                fsio.unlink_quiet(tmp)
                if not os.path.lexists(self._path("pending", L.pending_name(nb, job["id"]))):
                    if self.reservation(job["id"]) == job["token"]:  # not stored: give its id back
                        fsio.unlink_quiet(self._path("ids", job["id"]))
            raise _os_error("cannot store the job", e) from None
        return results

    # -- reading --------------------------------------------------------------------------------

    def read(self, folder, name, max_bytes=1 << 30, owners=None):
        """Parse and validate FOLDER/NAME. Raises JobInvalid, FileNotFoundError."""
        return jobdoc.validate(jobdoc.parse_bytes(fsio.read_regular(self._path(folder, name), max_bytes, owners)))

    def read_with_stat(self, folder, name, max_bytes=1 << 30):
        """(job, fstat) of FOLDER/NAME: the owner of the very file whose content was read."""
        data, st = fsio.read_regular_stat(self._path(folder, name), max_bytes)
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
        path = self._path("processing", claim.name)
        for _ in range(20):
            try:
                data, who = fsio.read_checked(path, max_bytes, lambda st: sysspool.admit(st, max_bytes))
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
        return os.lstat(self._path(folder, name)).st_uid

    def check_mine(self, job_id, folder, name):
        """In a system spool, a user acts only on their own jobs: raise NotYours for another's."""
        if not self.system or os.geteuid() == 0:
            return
        uid = self.job_owner(folder, name)
        if uid != os.geteuid():
            raise NotYours(f"job {job_id} belongs to {sysspool.describe(uid)}; only they (or root) may see or act on it")

    def listdir(self, folder):
        try:
            return os.listdir(self._dir(folder))
        except FileNotFoundError:
            return []

    def stat(self, folder, name):
        """lstat of FOLDER/NAME (FileNotFoundError when it is gone)."""
        return os.lstat(self._path(folder, name))

    def folder_path(self, folder):
        """The path of a spool folder, for watching it (never for building names in it)."""
        return self._dir(folder)

    def has_writer(self, name):
        """Does a process still have pending/NAME open for writing? (see fsio.has_writer)"""
        return fsio.has_writer(self._path("pending", name))

    # -- claims: the rename is the lock ---------------------------------------------------------

    def take(self, op, origin):
        """Claim ORIGIN (a name in OP's source folder) for this process: the Claim, or None when
        another process won the rename. Raises OSError(ENAMETOOLONG) when the claim's name
        would not fit (see reject_long_name)."""
        claim = L.parse_claim(L.claim_name(op, origin, self.wid))
        try:
            os.rename(self._path(L.BY_OP[op].source, origin), self._path("processing", claim.name))
        except FileNotFoundError:
            return None  # RACE: another worker or command claimed it first; it is theirs
        return claim

    def take_over(self, claim):
        """Steal CLAIM from its dead holder (recovery): the new Claim, or None if another
        recovering process stole it first."""
        mine = L.parse_claim(L.claim_name(claim.op, claim.origin, self.wid))
        try:
            os.rename(self._path("processing", claim.name), self._path("processing", mine.name))
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
        return self._link_no_replace(self._path("processing", claim.name), L.BY_OP[claim.op].source, claim.origin)

    def drop(self, claim):
        """Remove a claim whose transition has committed elsewhere (a stale copy)."""
        fsio.unlink_quiet(self._path("processing", claim.name))

    def finish(self, claim, job, not_before=None, *, hold=False, owner=None):
        """Write JOB to the folder its state names, in place of CLAIM (transitions 2, 5-9, 11-14);
        OWNER: whose the new version is (see Commit.owner).

        Returns (folder, name), or None when the claim had been taken over (see commit)."""
        c = Commit(claim, job, not_before, hold=hold, owner=owner)
        try:
            self.commit([c])
        except OSError:
            if c.fence is None and c.staged is not None:  # back as it was: the claim holds the job
                fsio.unlink_quiet(c.staged)
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
                    os.rename(c.staged, self._path(*c.dest))
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
                fsio.fsync_dir(self._dir(folder))
            for c in published:
                fsio.unlink_quiet(c.fence)
        if error is not None:
            raise error

    def _fence(self, c):
        """Move C's claim out of reach of recovery; False (and the stage dropped) if it was taken."""
        if c.fence is not None:
            return True  # fenced by an earlier try whose publish failed
        fence = c.staged.rpartition(".")[0] + ".fence"
        try:
            os.rename(self._path("processing", c.claim.name), fence)
        except FileNotFoundError:  # RACE: recovery took the claim over: the job is its holder's now
            fsio.unlink_quiet(c.staged)
            c.outcome = TAKEN_OVER
            return False
        c.fence = fence
        return True

    def _unfence(self, c):
        """Put C's claim back after a failed publish, so that the job stays visible meanwhile."""
        try:
            os.rename(c.fence, self._path("processing", c.claim.name))
            c.fence = None
        except OSError:
            pass  # it stays fenced: the next commit publishes from there

    # -- rejected/ (transition 3) ---------------------------------------------------------------

    def _link_no_replace(self, src, folder, name):
        """Move SRC to FOLDER/NAME (or NAME.N), durable in FOLDER before SRC goes. Returns the name."""
        name = fsio.link_unique(src, self._dir(folder), name)
        fsio.fsync_dir(self._dir(folder))
        fsio.unlink_quiet(src)
        return name

    def rejected_as(self, claim):
        """The name under which rejected/ already holds the very file of CLAIM, or None: an
        interrupted rejection had committed."""
        return fsio.name_of_same_file(self._path("processing", claim.name), self._dir("rejected"), claim.origin)

    def reject(self, claim, reason, now):
        """Move a claimed bad file to rejected/ under its own name, with NAME.reason beside it.

        Order: link into rejected/, write the reason, fsync rejected/, drop the claim. A crash in
        between leaves the claim, and recovery finishes the rejection (see rejected_as)."""
        src = self._path("processing", claim.name)
        name = self.rejected_as(claim)
        if name is None:
            name = fsio.link_unique(src, self._dir("rejected"), claim.origin)
        self._write_reason(name, reason, now)
        fsio.fsync_dir(self._dir("rejected"))
        fsio.unlink_quiet(src)
        return name

    def _write_reason(self, name, reason, now):
        try:
            fsio.write_file(self._path("rejected", name + L.REASON_SUFFIX), f"{iso(now)} {reason}\n".encode(), self.file_mode, sync=False)
        except FileExistsError:
            pass  # RACE: a recovering worker finished the same rejection; the reason is there
        if self.system and os.geteuid() == 0:
            self._give_reason(name)

    def _give_reason(self, name):
        """In a system spool, NAME.reason is the rejected file's owner's (0600), so that they can
        read why (`list --state rejected`); only root writes in rejected/."""
        try:
            uid = self.stat("rejected", name).st_uid
            os.chown(self._path("rejected", name + L.REASON_SUFFIX), uid, -1, follow_symlinks=False)
        except OSError:
            pass  # the reason stays root's: the rejection stands all the same

    def reject_tmp(self, name, reason, now):
        name = self._link_no_replace(self._path("tmp", name), "rejected", name)
        self._write_reason(name, reason, now)
        return name

    def reject_long_name(self, name, now):
        """Reject pending/NAME whose name is too long to carry a claim suffix.

        The file keeps its bytes but gets a shorter name (unique while it exists: the inode number);
        the reason file records the full original name. None if another process moved it first.
        """
        try:
            short = f"{name[:150]}...{self.stat('pending', name).st_ino}"
            os.rename(self._path("pending", name), self._path("rejected", short))
        except FileNotFoundError:
            return None  # RACE: another worker rejected it first
        self._write_reason(short, f"file name too long for the spool ({len(os.fsencode(name))} bytes); original name: {name!r}", now)
        fsio.fsync_dir(self._dir("rejected"))
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
                    reason = fsio.read_regular(self._path("rejected", name + L.REASON_SUFFIX), 1 << 16).decode("utf-8", "replace").strip()
                except (OSError, JobInvalid):
                    pass
            out.append((name, reason))
        return out

    # -- finding a job by id --------------------------------------------------------------------

    def locate(self, job_id, include_processing=True):
        """Where job ID is: (folder, name, Claim or None), or None. O(1) for done/ and dead/."""
        for folder in L.FINAL_FOLDERS:
            if os.path.lexists(self._path(folder, L.final_name(job_id))):
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
            if os.path.lexists(self._path(folder, L.final_name(job_id))):
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
        path = self._path("logs", L.log_name(job_id, seq))
        try:
            fd = fsio.create(path, self.file_mode, append=True)
        except FileExistsError:
            os.unlink(path)
            fd = fsio.create(path, self.file_mode, append=True)
        try:
            self._give(fd, owner)
        except OSError:
            os.close(fd)
            raise
        return fd

    def logs_writable(self):
        return os.access(self._dir("logs"), os.W_OK)

    def read_log(self, name, offset=0):
        """The bytes of logs/NAME from OFFSET on, or None when there is none. NAME comes from a job
        file: only a log's name is looked up, never a path."""
        if not L.LOG_RE.match(name):
            return None
        try:
            with open(self._path("logs", name), "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return None

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
        tmp = self._path("workers", f".{wid}.{os.urandom(3).hex()}.tmp")
        fsio.write_file(tmp, data, self.file_mode, sync=False)
        os.rename(tmp, self._path("workers", L.heartbeat_name(wid)))

    def read_heartbeat(self, wid):
        """The JSON object in workers/WID.json, or None (gone, being replaced, or not a heartbeat)."""
        import json

        try:
            data = json.loads(fsio.read_regular(self._path("workers", L.heartbeat_name(wid)), 1 << 16))
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
        fsio.unlink_quiet(self._path("workers", name))

    def remove_heartbeat(self, wid):
        fsio.unlink_quiet(self._path("workers", L.heartbeat_name(wid)))

    def fs_now(self, fallback):
        """The spool's file-system clock now: the mtime of this process's heartbeat, touched. Ages
        of heartbeats, claims and tmp/ files (mtimes and ctimes set by that clock, perhaps on
        another host's behalf) are judged against it, never against this host's clock."""
        path = self._path("workers", L.heartbeat_name(self.wid))
        try:
            os.utime(path, None)
            return os.stat(path).st_mtime
        except OSError:
            return fallback  # no heartbeat of ours (a CLI command): this host's clock it is

    def heartbeat_mtime(self, wid):
        try:
            return os.stat(self._path("workers", L.heartbeat_name(wid))).st_mtime
        except OSError:
            return None

    def heartbeat_with_owner(self, wid):
        """(uid, JSON object) of workers/WID.json, both from the one file read (fstat), or None:
        recovery's proof that a live process is the worker holding a claim (recovery.claim_is_lost)."""
        import json

        try:
            fd = os.open(self._path("workers", L.heartbeat_name(wid)), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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
            return os.stat(self._path("workers", L.heartbeat_name(wid))).st_uid
        except OSError:
            return None

    # -- SPOOL/counters.json: totals of ended attempts (counters.py; written under its lock) ------

    def read_counters(self):
        """The JSON object in SPOOL/counters.json; {} when there is none (or it is not one)."""
        import json

        try:
            data = json.loads(fsio.read_regular(os.path.join(self.root, L.COUNTERS), 1 << 20))
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
            os.link(tmp, self.pause_path, follow_symlinks=False)
        except FileExistsError:
            return False  # RACE: paused already, perhaps by another `queuectl pause` just now
        finally:
            fsio.unlink_quiet(tmp)
        fsio.fsync_dir(self.root)
        return True

    def resume(self):
        """Remove SPOOL/paused: True if it was there."""
        try:
            os.unlink(self.pause_path)
        except FileNotFoundError:
            return False  # RACE: not paused, or another `queuectl resume` removed it first
        fsio.fsync_dir(self.root)
        return True

    def paused(self):
        """Is the spool paused? One lstat (workers ask before they claim). Raises OSError when
        that cannot be told (the spool's root unreadable)."""
        try:
            os.lstat(self.pause_path)
        except FileNotFoundError:
            return False
        return True

    def pause_info(self):
        """The JSON object in SPOOL/paused, or None when the spool is not paused. The file's
        presence is the pause: a file that is not such an object (made by hand) reads as {}
        with `since` its mtime."""
        import json

        path = self.pause_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(fsio.read_regular(path, 1 << 16))
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
        try:
            it = os.scandir(self._dir(folder))
        except FileNotFoundError:
            return
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # RACE: moved on (a dlq retry, another purger) since the read
                yield entry.name, st.st_ino, st.st_mtime

    def entry_stat(self, folder, name):
        """lstat of FOLDER/NAME, or None when it is not there."""
        try:
            return os.lstat(self._path(folder, name))
        except FileNotFoundError:
            return None

    def expire(self, folder, name, ino):
        """Take FOLDER/NAME (done/ or dead/) out of the spool for removal: a rename to
        tmp/qc-WORKER-HEX.purge, the commit point of a purge. Returns the tmp name, or None when
        another process moved it first, or when it is no longer the file scanned (inode INO)."""
        tmp = self._tmp_path("purge")
        try:
            os.rename(self._path(folder, name), tmp)
        except FileNotFoundError:
            return None  # RACE: a dlq retry or another purger took it first: theirs
        if os.lstat(tmp).st_ino != ino:  # RACE: a newer version came since the scan: not old
            os.rename(tmp, self._path(folder, name))
            return None
        return os.path.basename(tmp)

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
            fsio.unlink_quiet(self._path(folder, name))
        for folder in dict.fromkeys(f for f, _ in files if f in ("ids", "rejected")):
            fsio.fsync_dir(self._dir(folder))

    def sync(self, folders):
        """fsync each of FOLDERS once (a batch of expire()s is durable before ids are freed)."""
        for folder in folders:
            fsio.fsync_dir(self._dir(folder))

    # -- held/ and due now: renames of a waiting job, its content unchanged ----------------------

    def _move_waiting(self, folder, name, dest_folder, dest_name):
        """Rename FOLDER/NAME to DEST_FOLDER/DEST_NAME (the commit point) and make it durable.
        False when the file was gone: another process (a worker's claim) moved it first."""
        try:
            os.rename(self._path(folder, name), self._path(dest_folder, dest_name))
        except FileNotFoundError:
            return False  # RACE: a worker claimed it, or another command moved it first
        fsio.fsync_dir(self._dir(dest_folder))
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
            os.link(tmp, self._path("requests", L.request_name(job_id, kind)), follow_symlinks=False)
        except FileExistsError:
            return False  # RACE: another command asked the same first; one request will do
        finally:
            fsio.unlink_quiet(tmp)
        fsio.fsync_dir(self._dir("requests"))
        return True

    def requested(self, job_id, kind, owner=None):
        """Is there a request KIND for job ID? One lstat (a running job's worker asks on each wake).
        In a system spool, where every user may write in requests/, a request for a job run as
        OWNER (a sysspool.Owner) counts only if that user or root made it."""
        try:
            st = os.lstat(self._path("requests", L.request_name(job_id, kind)))
        except FileNotFoundError:
            return False
        return not (self.system and owner is not None) or st.st_uid in (0, owner.uid)

    def requests(self):
        """[(id, kind)] of the requests in requests/."""
        return [r for r in map(L.parse_request, self.listdir("requests")) if r is not None]

    def drop_request(self, job_id, kind):
        fsio.unlink_quiet(self._path("requests", L.request_name(job_id, kind)))

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
        return name if os.path.lexists(self._path("tmp", name)) else None

    def roll_forward(self, name, job, not_before=None, hold=False):
        """Publish a complete job left in tmp/ by a dead process: an interrupted enqueue (its id
        reserved), or a commit that died between its fence and its publish."""
        if not_before is None:
            not_before = parse_iso(job.get("run_at") or job["created_at"])
        folder, dest = _destination(job, not_before, hold)
        os.rename(self._path("tmp", name), self._path(folder, dest))
        fsio.fsync_dir(self._dir(folder))

    def drop_tmp(self, name):
        fsio.unlink_quiet(self._path("tmp", name))
