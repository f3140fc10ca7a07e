"""One worker process: a short loop of named steps.

    heartbeat -> recover -> claim -> run -> finish      (and wait, when nothing is due)

A finished attempt is made durable while the next job runs, in batches (results.py), or before
the worker sleeps.

Each step lives where it belongs: names and renames in spool.py, intake of new files in
intake.py, lost workers in recovery.py, the attempt itself in runner.py, its meaning in policy.py,
settling in results.py, file-system faults in faults.py, stop signals (and who sent them) in
stopsignals.py, log lines that never block in logsink.py, the job's processes in contain.py.

A job cannot stop its worker: a stop signal sent by the job, by any process the worker started, or
by any process of the pool (another worker's job) is ignored, logged once and noted in the
attempt's history. A stopping worker ends promptly: results the disk refuses are tried for
STOP_SETTLE seconds, then their jobs stay claimed (recovery counts those attempts as lost).
"""

import errno
import json
import os
import select
import signal
import stat
import time
from collections import deque

from queuectl import layout as L
from queuectl import claimboard, contain, counters, policy, runner
from queuectl.dueindex import DueIndex
from queuectl.errors import JobInvalid, SpoolError, Untrusted
from queuectl.faults import Faults
from queuectl.intake import Intake
from queuectl.job import read_limit
from queuectl.logsink import LogSink
from queuectl.procs import hostname, worker_id
from queuectl.recovery import Recovery
from queuectl.results import Unsettled
from queuectl.retention import Sweeper
from queuectl.settings import Watched
from queuectl.spool import TAKEN_OVER, explain
from queuectl.stopsignals import Requests, StopSignals, descends_from, signame
from queuectl.timeutil import iso
from queuectl.watch import PendingWatcher, poke_on_events, stop_observer

RESCAN_SECONDS = 60  # full listing of pending/, a safety net should an inotify event be lost
SETTINGS_CHECK = 0.2  # seconds between looks at config.json's mtime
PAUSE_CHECK = 0.2  # seconds between looks for SPOOL/paused while paused with jobs due (resume)
WATCH_DELAY = 0.5  # seconds after its start (or less: its first idle moment) a worker starts watching
POLL_SECONDS = 1.0  # without a watch (no inotify instance to be had): pending/ listed this often
WATCH_RETRY = 60.0  # ... and the watch tried again this often
STOP_SETTLE = 3.0  # seconds a stopping worker keeps trying to store finished results on a faulty disk
JOB_SLACK = 1.0  # seconds after its job ended that a stop signal from a vanished sender is still the job's
PID_SLACK = 60.0  # seconds after its job ended that a stop signal from the job's pid is still the job's


def attempt_env(base, job, spool_root, claim, owner=None):
    """The environment of a job's command: the worker's, the job's env, and queuectl's variables.
    Run as OWNER (a system spool): a clean one from OWNER's passwd entry instead of the worker's."""
    ours = {
        "QUEUECTL_JOB_ID": job["id"],
        "QUEUECTL_ATTEMPT": str(job.get("attempts", 0) + 1),
        "QUEUECTL_SPOOL": spool_root,
        runner.CLAIM_ENV: claim.name,
    }
    if owner is not None:
        from queuectl import sysspool

        return sysspool.child_env(owner, job.get("env"), ours)
    env = base.copy()
    env.update(job.get("env") or {})
    env.update(ours)
    return env


class _Run:
    """A job's run, to tell the stop signals it sends its worker from anyone else's."""

    __slots__ = ("job_id", "pid", "started", "ended", "ignored", "logged")

    def __init__(self, job_id):
        self.job_id = job_id
        self.pid = None  # known once spawned
        self.started = time.monotonic()
        self.ended = None
        self.ignored = []  # (signal name, sender pid, why)
        self.logged = False

    def covers(self, at, slack=JOB_SLACK):
        return self.started <= at and (self.ended is None or at <= self.ended + slack)

    def notes(self):
        if not self.ignored:
            return ()
        shown = ", ".join(f"{name} from pid {pid} ({why})" for name, pid, why in self.ignored[:5])
        more = f" and {len(self.ignored) - 5} more" if len(self.ignored) > 5 else ""
        return (f"ignored {len(self.ignored)} stop signal(s) sent to its worker: {shown}{more}; a job cannot stop its worker",)


class Worker:
    def __init__(self, spool, burst=False, ready_fd=None, stats_fd=None, supervisor=None, board=None):
        self.spool = spool
        self.burst = burst
        self.ready_fd = ready_fd
        self.stats_fd = stats_fd
        self.supervisor = supervisor  # its supervisor's pid: the pool's processes cannot stop it either
        self.board = board  # the pool's claim board (claimboard.BoardView), or None: a worker alone
        self.claims_lost = 0  # claim renames another process won (each cost one failed rename)
        self.requests = Requests()
        self.signals = None
        self.runs = deque(maxlen=8)  # the latest jobs' runs (_Run), newest last
        self._ignored_logged_at = -3600.0
        self.sink = LogSink(note=lambda text: self._line(text))
        self.counts = counters.zero()  # attempts ended, by what they left their job as (counters.py)
        self.requests_observer = None  # wakes the worker when a request (queuectl cancel) arrives
        self.index = DueIndex()
        self.faults = Faults(self.log)
        self.settings = Watched(spool.config_path, warn=self.log)
        self.unsettled = Unsettled(spool, self.settings)
        self.intake = Intake(spool, self.index, self.settings, self.log)
        self.current = None  # the claim of the job running now
        self.recovery = Recovery(spool, self.settings, self.log, held=self.held_claims, owners=self.intake.owners)
        self.sweeper = Sweeper(spool, self.settings, self.log)  # retention, a step at a time
        self.watcher = None  # started by start_watching(): first jobs need not wait for watchdog
        self._polling = False  # no watch could be had: pending/ is listed every POLL_SECONDS
        self.wid = self.wake_r = self.wake_w = self.started_at = self.base_env = self._pending_ino = self.contain = None
        self._supervisor_id = None
        self.paused = False  # SPOOL/paused was there at the last look (queuectl pause)
        self._watch_at = self._next_heartbeat = self._next_recovery = self._next_scan = self._next_settings_check = 0.0

    # -- the loop -----------------------------------------------------------------------------

    @property
    def stop_requests(self):
        """0: running; 1: finish the running job, then exit; 2: stop the running job too."""
        return self.requests.level

    def run(self):
        self.setup()
        try:
            while not self.take_signals():
                # NOW (the wall clock) says which jobs are due; MONO (monotonic) runs every
                # timer of the worker's own, so that a clock step neither fires nor stalls them
                now, mono = time.time(), time.monotonic()
                self.refresh_settings(mono)
                self.heartbeat(mono)
                self.recover(mono)
                self.intake_events(now, mono)
                claimed = self.claim(now) if mono >= self.faults.hold_until and self.may_claim(now) else None
                if claimed:
                    self.run_and_finish(*claimed)
                    self.start_watching(mono)
                    continue
                self.settle()
                self.retain(now, mono)
                if self.start_watching(mono, idle=True):
                    continue  # look again at pending/ now that events will wake us
                if self.burst and self.idle_for_good(now):
                    break
                self.wait(now, mono)
        finally:
            self.teardown()
        return 0

    # -- steps --------------------------------------------------------------------------------

    def setup(self):
        self.spool.ensure(create=False)  # a spool that vanished (unmounted) is not made again here
        if self.spool.system and os.geteuid() != 0:
            raise SpoolError(f"{self.spool.root} is a system spool: its workers run as root (each job as its owner)")
        self.wid = self.spool.wid
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.signals = StopSignals(self.wake_w)
        self.signals.start()  # before watchdog starts its threads: they inherit the signal mask
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if self.supervisor:
            self._supervisor_id = worker_id(self.supervisor)
        self._watch_at = time.monotonic() + WATCH_DELAY
        self._pending_ino = self.spool.stat("pending", ".").st_ino
        self.started_at = iso(time.time())
        runner.seal_inherited_fds()
        self.contain, contain_note = contain.for_worker(self.wid)  # after the seal: its probe is a process
        self.base_env = dict(os.environ)
        self.heartbeat(time.monotonic())
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"r")
            os.close(self.ready_fd)
        self.log(f"started; jobs contained by: {self.contain.describe()}{contain_note}")
        self.note_pause(bool(self.guard("look for a pause", self.spool.paused)))  # started paused: it idles

    def take_signals(self):
        """Judge the stop signals received since the last look; returns stop_requests.

        A request from outside the worker's jobs counts (per sender: see stopsignals.Requests)
        and is acknowledged in the heartbeat; one from a job, or from the pool, is ignored."""
        if self.signals is None:
            return self.requests.level
        for sent in self.signals.take():
            source = self._from_job(sent)
            name, who = signame(sent.signo), "an unknown process" if sent.pid is None else f"pid {sent.pid}"
            if source is not None:
                self._ignore(sent, *source)
                continue
            if self.requests.add(sent.pid):
                what = "finishing the running job, then exiting" if self.requests.level == 1 else "stopping the running job now"
                self.log(f"{name} from {who}: {what}")
            self.heartbeat(time.monotonic(), force=True)  # says who asked: a second `worker stop` sees it
        return self.requests.level

    def _from_job(self, sent):
        """(why, _Run or None) if SENT came from one of the worker's jobs or the pool; None if
        from outside (the supervisor, an operator, `worker stop`): a stop request."""
        me = os.getpid()
        if sent.pid is None or sent.pid in (0, me) or sent.pid == self.supervisor:
            return None  # unknown (no sigwaitinfo), the kernel, another pid namespace, the supervisor
        current = next((r for r in reversed(self.runs) if r.covers(sent.at)), None)
        for run in reversed(self.runs):
            if run.pid is not None and run.pid == sent.pid and run.covers(sent.at, PID_SLACK):
                return "the job", run
        if sent.lineage is None:  # gone before it could be looked at: kill(1), a subshell...
            return ("gone before it could be identified, while the job ran", current) if current else None
        _, pgid, sid = sent.lineage[0]
        for run in reversed(self.runs):
            if run.pid is not None and run.pid in (pgid, sid):
                return "a process of the job", run
        if descends_from(sent, me):
            return "a process the worker started", current or (self.runs[-1] if self.runs else None)
        if self.supervisor and descends_from(sent, self.supervisor):
            return "a process of the pool", None  # another worker's job: not this job's doing
        return None

    def _ignore(self, sent, why, run):
        name = signame(sent.signo)
        if run is not None:
            run.ignored.append((name, sent.pid, why))
            if run.logged:
                return
            run.logged = True
            self.log(f"job {run.job_id}: {name} from pid {sent.pid} ({why}) ignored: a job cannot stop its worker")
            return
        now = time.monotonic()
        if now - self._ignored_logged_at >= 60:
            self._ignored_logged_at = now
            self.log(f"{name} from pid {sent.pid} ({why}) ignored: a job cannot stop its worker")

    def heartbeat(self, mono, force=False):
        if mono < self._next_heartbeat and not force:
            return
        self._next_heartbeat = mono + self.settings["heartbeat-seconds"]
        data = {"id": self.wid, "pid": os.getpid(), "host": hostname(), "started_at": self.started_at, "heartbeat_at": iso(time.time())}
        if self._supervisor_id:
            data["supervisor"] = self._supervisor_id
        data["counts"] = self.all_counts()
        data["claims_lost"] = self.claims_lost
        # what recovery and `status` believe of this worker: the claims it holds (a claim named
        # by no live worker's heartbeat is lost) and the owners whose jobs it runs
        data["claims"] = sorted(self.held_claims())
        owners = self.intake.owners()
        data["trusts"] = sorted(owners) if owners is not None else "all"  # a system spool's: everyone's
        if self.requests.level:
            data["stopping_since"] = iso(self.requests.since)
            data["stop_requested_by"] = self.requests.senders()
            if self.requests.level >= 2:
                data["stopping_now"] = True
        self.guard("write heartbeat", self.spool.write_heartbeat, self.wid, json.dumps(data).encode())

    def all_counts(self):
        """Attempts this worker ended, its runs' and its recovery's (lost attempts) together."""
        return {k: self.counts[k] + self.recovery.counts[k] for k in counters.NAMES}

    def retain(self, now, mono):
        """One bounded retention step (retention.Sweeper): between jobs, or while one runs."""
        self.guard("apply retention", self.sweeper.step, now, mono)

    def _after_spawn(self):
        """Once a job has started: watch requests/ (queuectl cancel), settle earlier results, then
        a retention step, while it runs."""
        self.watch_requests()
        sooner = self.settle_if_due()
        self.retain(time.time(), time.monotonic())
        return sooner

    def recover(self, mono):
        if mono < self._next_recovery:
            return
        self._next_recovery = mono + self.settings["heartbeat-seconds"]
        if self.check_spool():
            self.guard("recover", self.recovery.run, time.time())
            returned, self.recovery.returned = self.recovery.returned, []
            for name in returned:  # a link into pending/ looks like a file written in place: read it now
                self.guard("read a new job", self.intake.consider, name, time.time())

    def check_spool(self):
        """Is pending/ still the folder we watch? Gone (removed, unmounted): say so once and wait.
        Back, or replaced by a new folder: watch it again and rescan it. A folder whose path
        names another one now (swapped for a symlink) is said once; its handle is kept."""
        for text in self.spool.check_folders():
            self.log(text)
        try:
            ino = self.spool.stat("pending", ".").st_ino
        except OSError as e:
            self.fault("find the spool's pending/ folder", e)
            return False
        if ino != self._pending_ino:
            if self._pending_ino is not None:
                self.log("pending/ is back: watching it again")
                self.faults.forget()
                if self.watcher is not None:
                    self.watcher.stop()
                    self.watcher = None
                self.start_watching(time.monotonic(), idle=True)
            self._pending_ino = ino
        return True

    def start_watching(self, mono, idle=False):
        """Start watching pending/ (watchdog) WATCH_DELAY seconds after the start, or at the first
        idle moment if sooner, then rescan once: files that came meanwhile are not missed, and a
        worker starts its first jobs without waiting for watchdog. True if it started now."""
        if self.watcher is not None or mono < self._watch_at and (not idle or self._polling):
            return False
        watcher = PendingWatcher(self.spool.folder_path("pending"))
        try:
            watcher.start()
        except OSError as e:  # no inotify instance left (fs.inotify.max_user_instances), say: poll
            watcher.stop()
            if not self._polling:
                self.log(f"cannot watch pending/ ({e.strerror or e}): listing it every {POLL_SECONDS:g} s instead, "
                         f"and trying to watch it again every {WATCH_RETRY:g} s (raise fs.inotify.max_user_instances)")
            self._polling = True
            self._watch_at = mono + WATCH_RETRY
            self._next_scan = min(self._next_scan, mono + POLL_SECONDS)
            return False
        if self._polling:
            self.log("watching pending/ again")
            self._polling = False
        self.watcher = watcher
        runner.seal_inherited_fds()  # watchdog's inotify fd must not leak into jobs
        self._next_scan = 0.0
        return True

    def intake_events(self, now, mono):
        if mono >= self._next_scan or now >= self.intake.recheck_at:
            self._next_scan = mono + (POLL_SECONDS if self._polling else RESCAN_SECONDS)
            self.intake.recheck_at = float("inf")
            if self.watcher is not None:
                self.watcher.drain()
            self.guard("scan pending/", self.intake.scan, now)
            return
        if self.watcher is None:
            return
        for name, kind in self.watcher.drain():
            if kind == "created" and self._written_in_place(name):
                continue  # written in place, not renamed in: wait for its close (or the rescan)
            self.guard("read a new job", self.intake.consider, name, now)

    def _written_in_place(self, name):
        """A regular file that open() created in pending/? Not a symlink (isfile follows it) nor a
        hard link (maildir's link(2) delivery): those get no close event, so they are read at once."""
        try:
            st = self.spool.stat("pending", name)
        except OSError:
            return False  # RACE: claimed meanwhile; nothing to wait for
        return stat.S_ISREG(st.st_mode) and st.st_nlink == 1

    def may_claim(self, now):
        """False while the spool is paused (SPOOL/paused exists). One lstat, and only when a job
        is due: an idle worker does not look, and the next due job (or drop-in) makes it look."""
        if not self.index.has_due(now):
            return False
        paused = self.guard("look for a pause", self.spool.paused)
        if paused is None:
            return False  # cannot tell (a fault, logged): claim nothing until we can
        self.note_pause(paused)
        return not paused

    def note_pause(self, paused):
        """Log a pause or a resume once, when the worker first sees it."""
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            info = self.guard("read the pause", self.spool.pause_info) or {}
            by = info.get("by")
            who = f" by {by.get('user')}@{by.get('host')}" if isinstance(by, dict) else ""
            self.log(f"spool paused{who} since {info.get('since', '?')}: running nothing new until `queuectl resume`")
        else:
            self.log("spool resumed: running due jobs again")

    def claim(self, now):
        """Win the rename of a due job (see pick): (Claim, job, owner), or None. In a system spool
        the claimed file is read again, and its owner taken from it (Spool.read_obeyed): what the
        index read earlier is not what is obeyed."""
        while True:
            self.read_board(now)
            name = self.pick(now)
            if name is None:
                return None
            doc = self.index.take_doc(name)
            self.index.discard(name)
            try:
                claim = self.spool.take("run", name)
            except OSError as e:
                self.fault("claim a job", e)
                return None
            if self.board is not None:  # gone either way: taken by us, or by a worker outside the pool
                self.board.publish(name)
            if claim is None:
                self.claims_lost += 1
                continue  # RACE: another worker won this one; try the next
            if doc is not None and not self.spool.system:
                return claim, doc, None
            try:
                return (claim, *self.spool.read_obeyed(claim, read_limit(self.settings["max-job-bytes"]), self.intake.owners()))
            except Untrusted as e:  # RACE: another user's file was moved to its name meanwhile
                self.release(claim)
                self.intake.leave(claim.origin, e.uid)
            except JobInvalid as e:
                self.intake.reject(claim, str(e), now)
            except OSError as e:
                self.fault("read a claimed job", e)
                self.release(claim)
                return None

    def pick(self, now):
        """The name to try next: the best due job for a worker alone. Worker k of a pool of n
        takes the (k mod m)-th best of the m <= n best due jobs of the best priority, so that
        workers claiming at the same moment try different names instead of all renaming the
        same one (issue 11: the herd). Priority is never passed over; within a priority, jobs
        start in not-before-then-age order up to the pool's size."""
        n = self.board.count if self.board is not None else 1
        top = self.index.top_due(now, n)
        if not top:
            return None
        top = [key for key in top if key[0] == top[0][0]]
        return top[self.board.slot % len(top) if self.board is not None else 0][3]

    def read_board(self, now):
        """Forget the names the pool's other workers claimed; read again those they put back."""
        if self.board is None:
            return
        for kind, name in self.board.news():
            if kind == claimboard.CLAIMED:
                self.index.discard(name)
            else:
                self.guard("read a new job", self.intake.consider, name, now)

    def release(self, claim):
        """Put a claimed job back in pending/, unchanged; the pool's workers hear of it."""
        name = self.guard("release a job", self.spool.put_back, claim)
        if name is not None and self.board is not None:
            self.board.publish(name, claimboard.RETURNED)
        return name

    def held_claims(self):
        """The names of the claims this worker holds now: the running job's and those of results
        not settled yet. Any other claim under its id is lost (recovery takes it)."""
        held = {i.claim.name for i in self.unsettled.items}
        if self.current is not None:
            held.add(self.current.name)
        return held

    def run_and_finish(self, claim, job, owner=None):
        self.current = claim
        try:
            self._run_and_finish(claim, job, owner)
        finally:
            self.current = None

    def _run_and_finish(self, claim, job, owner=None):
        seq = policy.attempt_seq(job)
        if not self.spool.logs_writable():
            self.fault(f"write the log of job {job['id']}", OSError(errno.EACCES, "logs/ is not writable"))
            self.release(claim)
            return
        run = _Run(job["id"])
        self.runs.append(run)
        spec = runner.Spec(
            command=job["command"],
            env=attempt_env(self.base_env, job, self.spool.root, claim, owner),
            cwd=job.get("cwd"),
            open_log=lambda: self.spool.open_log(job["id"], seq, owner),
            timeout=job.get("timeout") or self.settings["job-timeout"] or None,
            max_log_bytes=self.settings["max-log-bytes"],
            tick=self.settings["heartbeat-seconds"],
            wakeup_fd=self.wake_r,
            on_tick=self._tick,
            should_abort=lambda: self.take_signals() >= 2,
            after_spawn=self._after_spawn,
            contain=self.contain,
            on_spawn=lambda pid: setattr(run, "pid", pid),
            should_cancel=lambda: self.spool.requested(job["id"], "cancel", owner),
            owner=owner,
        )
        try:
            attempt = runner.run(spec)
        except OSError as e:  # no pipe or process to be had (EMFILE, EAGAIN): try again later
            self.fault(f"start job {job['id']}", e)
            self.release(claim)
            return
        finally:
            run.ended = time.monotonic()
        self.take_signals()  # what the job sent just before it ended goes in its history too
        attempt.notes = run.notes()
        if attempt.leftovers:
            self.log(f"job {job['id']}: killed {attempt.leftovers} process(es) it left running")
        if attempt.log_error is not None:
            self.fault(f"write the log of job {job['id']}", attempt.log_error)
        else:
            self.faults.cleared()
        if attempt.interrupted:
            self.release(claim)
            self.log(f"job {job['id']} stopped and put back in pending/ (attempt not counted)")
            return
        self.unsettled.add(claim, job, attempt, L.log_name(job["id"], seq) if attempt.log_written else None, owner)

    def watch_requests(self):
        """Watch requests/ (queuectl cancel), from the first job on: started once its job runs,
        so that watchdog's start-up cost never delays a job (the job's request was looked for
        right after its spawn)."""
        if self.requests_observer is not None:
            return
        try:
            self.requests_observer = poke_on_events(self.spool.folder_path("requests"), self.wake_w)
        except Exception as e:  # no inotify left (max_user_watches): requests are still read at every tick
            self.requests_observer = False
            self.log(f"cannot watch requests/ ({e}): a cancel is seen within heartbeat-seconds, not at once")
        runner.seal_inherited_fds()  # watchdog's inotify fd must not leak into jobs

    def _tick(self):
        """While a job runs: settings, heartbeat, and earlier results made durable within
        SETTLE_DELAY (results.py), however long the job runs. Returns when to be called next."""
        mono = time.monotonic()
        self.refresh_settings(mono)
        self.heartbeat(mono)
        if self.sink.pending:
            self.sink.flush()
        return self.settle_if_due()

    def refresh_settings(self, mono):
        """Re-read config.json if it changed; a stat at most every SETTINGS_CHECK seconds."""
        if mono >= self._next_settings_check:
            self._next_settings_check = mono + SETTINGS_CHECK
            trusted = self.settings["trusted-users"]
            self.settings.refresh()
            if self.settings["trusted-users"] != trusted and self.intake.left:
                self._next_scan = 0.0  # files left for another owner may be ours now: look at once

    def settle_if_due(self):
        """Settle a batch worth it (results.Unsettled.due); returns the seconds until the next
        one is, if any waits (a fault holds results back for the fault's back-off)."""
        if self.unsettled.due() and time.monotonic() >= self.faults.hold_until:
            self.settle()
        wait = self.unsettled.due_in()
        return None if wait is None else max(wait, self.faults.hold_until - time.monotonic())

    def settle(self):
        """Make the finished attempts durable, then account for them. On a file-system fault the
        rest stay queued, their jobs claimed, and claims pause. True when none is left."""
        done, error = self.unsettled.settle()
        for c in done:
            job = c.job
            if c.outcome == TAKEN_OVER:
                self.log(f"job {job['id']} attempt {job['attempts']}: result not stored ({_describe(job)}): "
                         "recovery took the job over while this worker was stopped; its new holder owns it")
                continue
            self.counts[L.CANCELLED if policy.was_cancelled(job) else job["state"]] += 1
            if c.answers:  # the request it answered is done with (one that came later: its command removes it)
                self.guard("remove a request", self.spool.drop_requests, job["id"])
            if job["state"] == "failed" and c.dest[0] == "pending" and self._hold_late(job["id"], c.dest[1]):
                detail = "held (queuectl hold, asked as its result was stored)"
            elif job["state"] == "failed" and c.dest[0] == "held":
                detail = "held (queuectl hold)"
            elif job["state"] == "failed":
                self.index.add(c.dest[1], job.get("priority") or 0, c.not_before, job.get("created_at") or "")
                detail = f"retry at {iso(c.not_before)}"
            else:
                detail = f"now {job['state']}"
            self.log(f"job {job['id']} attempt {job['attempts']}: {_describe(job)}, {detail}")
        if error is not None:
            self.fault("store the results of finished jobs", error)
            return False
        return True

    def _hold_late(self, job_id, name):
        """A hold request that came after the attempt's end was recorded but before `queuectl
        hold` could see the job in pending/ (spool_layout.md, "Held jobs and requests"): hold
        the retry now. True if it is held (by us, or by the command that raced us)."""
        if not self.guard("look for a request", self.spool.requested, job_id, "hold"):
            return False
        if self.guard("hold a job", self.spool.hold, name):
            self.guard("remove a request", self.spool.drop_request, job_id, "hold")
        return True

    def idle_for_good(self, now):
        """--burst: nothing due and nothing running anywhere in the spool that this worker could
        run (a retry of a job running elsewhere): jobs of owners it does not trust are not its
        work. A paused spool has nothing due: its waiting jobs are left for after `queuectl resume`."""
        if self.unsettled or self._due(now):
            return False
        if self._running_elsewhere():
            return False  # its retry may come: meanwhile the watched index tells what arrives
        # a full listing of pending/ only once nothing runs: the last look before leaving (an idle
        # worker polling every 50 ms must not read a big pending/ each time: issue 11)
        self.intake.scan(now)
        return not self._due(now) and not self._running_elsewhere()

    def _running_elsewhere(self):
        return any(c.op == "run" and self._trusted_claim(c) for c in self.spool.claims())

    def _due(self, now):
        """A job is due (or a pause that cannot be read: not known to be paused)."""
        return self.may_claim(now) or (self.index.has_due(now) and not self.paused)

    def _trusted_claim(self, claim):
        try:
            return self.intake.trusts(self.spool.stat("processing", claim.name).st_uid)
        except OSError:
            return False  # RACE: settled or taken over meanwhile

    def wait(self, now, mono):
        """Sleep until a file arrives, a signal comes, or the next timer (due job, heartbeat)."""
        hold = self.faults.hold_until - mono  # seconds until claims may resume
        timeout = min(self._next_heartbeat, self._next_recovery, self._next_scan) - mono
        timeout = min(timeout, self.sweeper.due_in(mono))
        timeout = min(timeout, self.intake.recheck_at - now)
        nxt = self.index.next_due()
        if nxt is not None:
            timeout = min(timeout, max(nxt - now, hold))
        elif hold > 0 and self.index.has_due(now):
            timeout = min(timeout, hold)
        if self.paused and self.index.has_due(now):
            timeout = min(timeout, PAUSE_CHECK)  # due jobs wait for a resume: look for it
        timeout = max(0.0, timeout)
        if self.burst:
            timeout = min(timeout, 0.05)  # others' jobs finish in done/, which is not watched
        self.pause(timeout)

    def pause(self, timeout):
        # log lines waiting for a reader (logsink.py) go out as soon as the reader makes room
        out = [self.sink.fileno()] if self.sink.pending and self.sink.fileno() is not None else []
        try:
            fds = [self.wake_r] if self.watcher is None else [self.watcher.rfd, self.wake_r]
            ready, writable, _ = select.select(fds, out, [], timeout)
        except InterruptedError:
            ready = writable = []
        if self.watcher is not None and self.watcher.rfd in ready:
            self.watcher.clear()
        runner.drain_wakeup(self.wake_r)
        if writable:
            self.sink.flush()

    def teardown(self):
        # results wait for a disk that refuses them STOP_SETTLE seconds at most (not at all after
        # a second stop request): then their jobs stay claimed, and recovery counts them as lost
        give_up = time.monotonic() + STOP_SETTLE
        while not self.settle():
            left = give_up - time.monotonic()
            if left <= 0 or self.take_signals() >= 2:
                ids = ", ".join(sorted({i.job["id"] for i in self.unsettled.items}))
                self.log(
                    f"stopping without the results of {len(self.unsettled)} finished attempt(s), which the disk refuses: "
                    f"job(s) {ids} stay claimed in processing/; the next worker's recovery counts them as lost and runs them again"
                )
                break
            self.pause(min(self.faults.delay, left))
        if self.watcher is not None:
            self.watcher.stop()
        stop_observer(self.requests_observer or None)
        if self.contain is not None:
            self.contain.close()
        self.sweeper.close()
        self.fold_counts()
        c = self.counts
        cancelled = f", {c['cancelled']} cancelled" if c["cancelled"] else ""  # their jobs are dead, but did not fail
        lost = f"; {self.claims_lost} claim(s) lost to other workers" if self.claims_lost or self.board else ""
        self.log(f"stopped: {c['completed']} completed, {c['failed']} failed, {c['dead']} dead{cancelled}{lost}")
        if self.stats_fd is not None:
            os.write(self.stats_fd, (json.dumps({**self.counts, "claims_lost": self.claims_lost}) + "\n").encode())
        if self.signals is not None and self.supervisor is None:
            self.signals.close()  # run inside another program: give it its signals back
        self.sink.close(timeout=0.5)

    def fold_counts(self):
        """Exiting: this worker's counts go into the spool's totals as its heartbeat goes. If that
        cannot be done (the lock held too long, a fault), the heartbeat stays, with the final
        counts, and the recovery that finds this worker gone folds them."""
        try:
            counters.fold(self.spool, self.wid, self.all_counts())
        except OSError as e:  # TimeoutError (the lock held too long) among them
            self.log(f"could not add this worker's counts to counters.json ({e}); its heartbeat keeps them for recovery")
            self.heartbeat(time.monotonic(), force=True)

    # -- faults and logging -------------------------------------------------------------------

    def guard(self, action, fn, *args):
        """Run a step; a file-system fault is reported (see Faults), and None returned."""
        try:
            return fn(*args)
        except OSError as e:
            self.fault(action, e)
            return None

    def fault(self, action, error):
        self.faults.report(action, explain(error))  # permission denied: says whose, which mode, what to do
        self._next_scan = min(self._next_scan, self.faults.hold_until)  # then look at what came meanwhile (both monotonic)

    def _line(self, msg):
        return f"{iso(time.time())} queuectl worker {self.spool.wid}: {msg}\n"

    def log(self, msg):
        """One line on stderr; never blocks (a full pipe drops lines, counted: logsink.py)."""
        self.sink.write(self._line(msg))


def _describe(job):
    if job["state"] == "completed":
        return "exit 0"
    return job.get("last_error") or f"exit {job.get('exit_code')}"
