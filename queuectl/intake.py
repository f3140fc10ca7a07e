"""Intake: what a worker does with a file it finds in pending/.

A job queuectl accepted (canonical name, valid, carrying its token) goes into the due index. A
drop-in is adopted: claimed, validated, given its id and queuectl's fields, renamed to its
canonical name. Anything that is not a valid job is moved to rejected/ with the reason.

A file whose owner this worker does not trust (owners()) is neither: it is left where it is, for
a worker that trusts its owner. Who owns a job is not a fault of the job.
"""

import errno
import os
import stat

from queuectl import job as jobdoc
from queuectl import layout as L
from queuectl.errors import JobInvalid, Untrusted
from queuectl.settings import trusted_uids

WRITE_GRACE = 2.0  # seconds a young unparsable file in pending/ is given to be finished


def unsafe_name(name):
    """Why NAME cannot be a job file name, or None."""
    if name.startswith("."):
        return "hidden file name"
    if any(ord(c) < 32 or ord(c) == 127 or 0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return "file name with control characters or bytes that are not UTF-8"
    return None


def invalid_reason(spool, claim, max_bytes):
    """Why the drop-in under adoption CLAIM is not a valid job, or None if it is."""
    why = unsafe_name(claim.origin)
    if why:
        return why
    try:
        spool.read_claim(claim, max_bytes)
    except JobInvalid as e:
        return str(e)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return None


def adoption_identity(name, doc, st):
    """(id, token) of a drop-in: the same for the same file, so an interrupted adoption resumes."""
    token = f"a{st.st_ino:x}.{st.st_mtime_ns:x}"
    job_id = doc.get("id") or L.dropin_id(name)
    if not job_id:
        ms, digits = st.st_mtime_ns // 1_000_000, ""
        while ms:
            ms, r = divmod(ms, 36)
            digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
        job_id = f"{digits}-{st.st_ino:x}"
    return job_id, token


class Intake:
    def __init__(self, spool, index, settings, log):
        self.spool = spool
        self.index = index
        self.settings = settings
        self.log = log
        self._trusted = (None, None)
        self.left = {}  # pending/ names left for a worker that trusts their owner: {name: uid}
        self.recheck_at = float("inf")  # when a file left alone by being_written() is due a look

    def trusts(self, uid):
        owners = self.owners()
        return owners is None or uid in owners

    def owners(self):
        """The uids whose job files run: this worker's user and the trusted-users setting. The one
        place that says whom a worker trusts (intake, claims, recovery and --burst ask it). None
        (anyone's) in a system spool, where each job runs as its file's owner (Spool.read_obeyed)."""
        if self.spool.system:
            return None
        value = self.settings["trusted-users"]
        if self._trusted[0] != value:
            self._trusted = (value, trusted_uids(value) | {os.geteuid()})
        return self._trusted[1]

    def scan(self, now):
        """Read pending/ in full: the start, and a safety net for missed events."""
        names = sorted(self.spool.listdir("pending"))  # due soonest first: those stay parsed in the index
        present = set(names)
        self.index.retain(present)
        self.left = {n: u for n, u in self.left.items() if n in present}
        for name in names:
            self.consider(name, now)

    def consider(self, name, now):
        if name in self.index or self.untrusted(name):
            return
        nb, job_id = L.parse_pending(name)
        if nb is not None:
            try:
                doc = self.spool.read("pending", name, jobdoc.read_limit(self.settings["max-job-bytes"]), self.owners())
            except FileNotFoundError:
                return  # RACE: another worker claimed it meanwhile; it is theirs
            except Untrusted as e:  # RACE: replaced by another user's file since untrusted() looked
                return self.leave(name, e.uid)
            except (JobInvalid, OSError):
                doc = None
            if doc is not None and doc.get("token") and doc.get("id") == job_id:
                self.index.add(name, doc.get("priority") or 0, nb, doc.get("created_at") or "", doc)
                return
        if self.being_written(name, now):
            return
        self.adopt(name, now)

    def untrusted(self, name):
        """Is pending/NAME a regular file of an owner this worker does not trust? Then it is left
        (see leave). Not regular (a symlink, a FIFO): not a job whoever owns it, it is rejected."""
        try:
            st = self.spool.stat("pending", name)
        except OSError:
            return False  # RACE: claimed or removed meanwhile: the next step finds it gone
        if stat.S_ISREG(st.st_mode) and not self.trusts(st.st_uid):
            self.leave(name, st.st_uid)
            return True
        self.left.pop(name, None)  # trusted now (trusted-users changed): take it
        return False

    def leave(self, name, uid):
        """Leave pending/NAME for a worker that trusts its owner UID; said once per file."""
        if self.left.get(name) != uid:
            self.left[name] = uid
            from queuectl.owners import user_name

            self.log(f"left pending/{name!r} for a worker that trusts user {user_name(uid)}: this worker does not (trusted-users)")

    def being_written(self, name, now):
        """Is NAME a young regular file that does not parse yet and that a writer still has open
        (written in place, not through tmp/)? Leave it until its close event, or for WRITE_GRACE
        seconds where the open writer cannot be seen (see fsio.has_writer)."""
        try:
            st = self.spool.stat("pending", name)
        except OSError:
            return False  # RACE: claimed or removed meanwhile: adopt() will find it gone
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime >= WRITE_GRACE:
            return False
        try:
            self.spool.read("pending", name, self.settings["max-job-bytes"])
            return False
        except JobInvalid:
            pass
        except OSError:
            return False
        if self.spool.has_writer(name) is False:
            return False  # complete as it is: reject it now
        self.recheck_at = min(self.recheck_at, st.st_mtime + WRITE_GRACE)
        return True

    def adopt(self, name, now):
        try:
            claim = self.spool.take("adopt", name)
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise
            kept = self.spool.reject_long_name(name, now)
            if kept:
                self.log(f"rejected a file with a name too long for the spool (kept as rejected/{kept!r})")
            return
        if claim is None:
            return  # RACE: another worker is adopting it
        why = unsafe_name(name)
        if why:
            return self.reject(claim, why, now)
        try:
            doc, owner = self.spool.read_obeyed(claim, self.settings["max-job-bytes"], self.owners())
            st = self.spool.stat("processing", claim.name)
        except Untrusted as e:  # RACE: replaced by another user's file since untrusted() looked
            self.spool.put_back(claim)  # unchanged, still its owner's: never adopted by us
            return self.leave(name, e.uid)
        except JobInvalid as e:
            return self.reject(claim, str(e), now)
        except FileNotFoundError:
            return  # RACE: a recovering worker took our claim over (we were thought lost)
        job_id, token = adoption_identity(name, doc, st)
        if not jobdoc.valid_id(job_id):
            return self.reject(claim, f"bad id {job_id!r}", now)
        doc.pop("token", None)
        job, nb = jobdoc.accept(doc, now, self.settings["max-retries"], job_id=job_id, token=token)
        if not doc.get("id") and L.dropin_id(name) is None:
            job["original_name"] = name
        try:  # before the id is reserved: a refused job never uses one up
            jobdoc.check_size(job, self.settings["max-job-bytes"], st.st_size)
        except JobInvalid as e:
            return self.reject(claim, str(e), now)
        if not self.spool.reserve_id(job_id, token) and self.spool.reservation(job_id) != token:
            return self.reject(claim, f"duplicate id {job_id!r}: a job with that id already exists", now)
        if not doc.get("run_at"):
            name_nb = L.parse_pending(name)[0]
            nb = name_nb if name_nb is not None else now
        dest = self.spool.finish(claim, job, nb, owner=owner)
        if dest is None:
            return  # RACE: we were thought lost and recovery took the drop-in over: it is theirs
        self.index.add(dest[1], job["priority"], nb, job["created_at"], job)
        self.log(f"adopted {name!r} as job {job_id}")

    def reject(self, claim, reason, now):
        kept = self.spool.reject(claim, reason, now)
        self.log(f"rejected {claim.origin!r} (kept as rejected/{kept!r}): {reason}")
