"""The spool protocol: every path, rename, link and unlink in the spool happens here, following
the tables of layout.py (spool_layout.md). Other modules ask this one; none joins a spool path.

Concurrency: any number of processes act on one spool at once. A file that another process may
move under us is marked `RACE:`: who moved it, and why going on is safe.
"""

import os
import stat

from queuectl import fsio
from queuectl import job as jobdoc
from queuectl import layout as L
from queuectl.errors import DuplicateId, JobInvalid, NotFound, SpoolError
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

    def _dir(self, folder):
        return os.path.join(self.root, folder)

    def _path(self, folder, name):
        return os.path.join(self.root, folder, name)

    def ensure(self, group=None):
        """Create the spool and its folders if missing (0700; with GROUP: 2770, shared with it).

        A spool folder that is a symlink is refused: it could send writes outside the spool.
        Raises SpoolError.
        """
        mode = 0o2770 if group is not None else 0o700
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

    # -- staging and publishing: the commit point of every rewrite -----------------------------

    def _tmp_path(self, purpose):
        return self._path("tmp", f"qc-{self.wid}-{os.urandom(6).hex()}.{purpose}")

    def _stage(self, datas, purpose="write"):
        """Write each of DATAS to a new file in tmp/ and make them all durable (one flush for the
        batch). Returns the tmp paths; on an error none is left behind."""
        paths, fds = [], []
        try:
            for data in datas:
                path = self._tmp_path(purpose)
                fds.append(fsio.create(path, self.file_mode))
                paths.append(path)
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

    def _publish(self, moves):
        """Rename each staged (tmp path, folder, name) into place, then fsync each folder once.

        On an error the staged files not yet renamed are removed, and the OSError carries
        `.published`: how many were renamed (those stay published)."""
        done = 0
        try:
            for tmp, folder, name in moves:
                os.rename(tmp, self._path(folder, name))
                done += 1
            for folder in dict.fromkeys(folder for _, folder, _ in moves):
                fsio.fsync_dir(self._dir(folder))
        except OSError as e:
            for tmp, _, _ in moves[done:]:
                fsio.unlink_quiet(tmp)
            e.published = done
            raise

    # -- enqueue (transition 1) ----------------------------------------------------------------

    def reserve_id(self, job_id, token, src=None):
        """Take ids/ID atomically (it fails if the id is taken: then False).

        With SRC (a staged job file holding TOKEN), the reservation is a hard link to it: a link
        costs a tenth of a file creation, and the token is inside. Otherwise a new file holding
        TOKEN (drop-in adoption), written before its name appears: a crash cannot leave it empty.
        """
        try:
            if src is not None:
                os.link(src, self._path("ids", job_id), follow_symlinks=False)
                return True
            tmp = self._tmp_path("write")
            fsio.write_file(tmp, token.encode(), self.file_mode, sync=False)
            try:
                os.link(tmp, self._path("ids", job_id), follow_symlinks=False)
            finally:
                fsio.unlink_quiet(tmp)
        except FileExistsError:
            return False
        return True

    def reservation(self, job_id):
        """The token that holds ID, or None. ('' for a reservation that cannot be read.)"""
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
                if self.reserve_id(job["id"], job["token"], src=tmp):
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

    def read(self, folder, name, max_bytes=1 << 20, owners=None):
        """Parse and validate FOLDER/NAME. Raises JobInvalid, FileNotFoundError."""
        return jobdoc.validate(jobdoc.parse_bytes(fsio.read_regular(self._path(folder, name), max_bytes, owners)))

    def read_claim(self, claim, max_bytes=1 << 20, owners=None):
        return self.read("processing", claim.name, max_bytes, owners)

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

    def finish(self, claim, job, not_before=None):
        """Write JOB to the folder its state names, then drop the claim (transitions 5-9)."""
        return self.finish_many([(claim, job, not_before)])[0]

    def finish_many(self, results):
        """finish() for a batch [(claim, job, not_before)], sharing the flushes.

        Returns [(folder, name)] per result. On an OSError the first `.published` results of the
        batch are published (their claims dropped); the others are untouched, still claimed."""
        dests = []
        for _, job, nb in results:
            if job["state"] in ("completed", "dead"):
                dests.append((L.folder_of(job["state"]), L.final_name(job["id"])))
            else:
                dests.append(("pending", L.pending_name(nb, job["id"])))
        staged = self._stage([jobdoc.dumps(job) for _, job, _ in results])
        try:
            self._publish([(tmp, folder, name) for tmp, (folder, name) in zip(staged, dests)])
        except OSError as e:
            for claim, _, _ in results[: e.published]:
                self.drop(claim)
            raise
        for claim, _, _ in results:
            self.drop(claim)
        return dests

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
        for name in self.listdir("pending"):
            if L.parse_pending(name)[1] == job_id:
                return "pending", name, None
        return None

    def load(self, job_id):
        """(folder, name, Claim or None, job) for ID. Raises NotFound."""
        for _ in range(2):
            where = self.locate(job_id) if jobdoc.valid_id(job_id) else None
            if where is None:
                break
            try:
                return where + (self.read(where[0], where[1], 1 << 30),)
            except FileNotFoundError:
                continue  # RACE: it moved on to its next state while we looked: look once more
        raise NotFound(f"no job with id {job_id!r}")

    # -- logs -----------------------------------------------------------------------------------

    def open_log(self, job_id, seq):
        """Open logs/ID.SEQ.log for appending; a planted file or symlink there is replaced, not followed."""
        path = self._path("logs", L.log_name(job_id, seq))
        try:
            return fsio.create(path, self.file_mode, append=True)
        except FileExistsError:
            os.unlink(path)
            return fsio.create(path, self.file_mode, append=True)

    def logs_writable(self):
        return os.access(self._dir("logs"), os.W_OK)

    def read_log(self, name):
        """The bytes of logs/NAME, or None when there is none. NAME comes from a job file: only a
        log's name is looked up, never a path."""
        if not L.LOG_RE.match(name):
            return None
        try:
            with open(self._path("logs", name), "rb") as f:
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

    def heartbeat_mtime(self, wid):
        try:
            return os.stat(self._path("workers", L.heartbeat_name(wid))).st_mtime
        except OSError:
            return None

    # -- tmp/ -----------------------------------------------------------------------------------

    def tmp_files(self):
        """[(name, owner worker id or None, purpose or None, mtime)] of files in tmp/."""
        out = []
        for name in self.listdir("tmp"):
            try:
                mtime = self.stat("tmp", name).st_mtime
            except FileNotFoundError:
                continue  # RACE: its writer renamed it into pending/ meanwhile
            m = L.TMP_RE.match(name)
            out.append((name, m.group(1) if m else None, m.group(2) if m else None, mtime))
        return out

    def roll_forward(self, name, job):
        """Finish an interrupted enqueue: its tmp/ file holds a complete job with its id reserved."""
        nb = parse_iso(job.get("run_at") or job["created_at"])
        os.rename(self._path("tmp", name), self._path("pending", L.pending_name(nb, job["id"])))
        fsio.fsync_dir(self._dir("pending"))

    def drop_tmp(self, name):
        fsio.unlink_quiet(self._path("tmp", name))
