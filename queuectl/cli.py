"""The command line. Errors map to exit codes in one place, main(): 1 operational, 2 bad input.

Commands import what they need inside their bodies: `enqueue` must not pay for the worker, watchdog
or filelock.
"""

import json
import sys

import click

from queuectl.errors import BadInput, QueuectlError
from queuectl.layout import STATE_NAMES


def _spool(ctx):
    """The spool, its missing folders made. An explicit --spool or $QUEUECTL_SPOOL that does not
    exist is refused (a typo or an unmounted disk must not become a new, empty spool); only the
    default spool is created on first use (and any spool by `init`)."""
    from queuectl.spool import Spool

    return Spool(ctx.obj["root"]).ensure(create=not ctx.obj["explicit"])


def _emit_json(data):
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spool", "root", metavar="DIR", envvar="QUEUECTL_SPOOL", help="Spool folder [env QUEUECTL_SPOOL; default $XDG_DATA_HOME/queuectl].")
@click.version_option(package_name="queuectl", message="queuectl %(version)s")
@click.pass_context
def cli(ctx, root):
    """A job queue for shell commands on a plain-file spool: no server needed.

    \b
    Example:
      queuectl enqueue '{"command": "echo hello"}'
      queuectl worker start --burst
      queuectl status
    """
    from queuectl.spool import default_root

    ctx.obj = {"root": root or default_root(), "explicit": bool(root)}


@cli.command()
@click.option("--group", metavar="NAME", help="Share the spool with this group (folders 2770, files 0640).")
@click.option("--system", is_flag=True, help="A system spool (root only): any local user submits; root's workers run each job as its owner.")
@click.pass_context
def init(ctx, group, system):
    """Create the spool folders; private (0700) by default. Other commands create only the default
    spool on first use: a --spool or $QUEUECTL_SPOOL that does not exist must be made by init.

    \b
    Example:
      queuectl --spool /var/spool/myjobs init --group jobs
      sudo queuectl --spool /var/spool/queuectl init --system
    """
    from queuectl.spool import Spool

    if system and group is not None:
        raise BadInput("use one of --group and --system")
    if system:
        click.echo(Spool(ctx.obj["root"]).make_system().root)
        return 0
    click.echo(Spool(ctx.obj["root"]).ensure(group=group).root)


@cli.command()
@click.argument("job")
@click.pass_context
def enqueue(ctx, job):
    """Add a job (a JSON object), or JSON Lines from stdin with '-'; prints the id.

    \b
    Example:
      queuectl enqueue '{"id": "backup-1", "command": "tar czf /tmp/b.tgz ~/docs", "max_retries": 5}'
      printf '%s\\n' '{"command": "true"}' '{"command": "false"}' | queuectl enqueue -
    """
    from queuectl.settings import load

    spool = _spool(ctx)
    cfg = load(spool.config_path)
    max_retries = cfg["max-retries"]
    if job != "-":
        accepted = _accept(job, max_retries, cfg["max-job-bytes"])
        result = spool.enqueue([accepted])[0]
        if isinstance(result, QueuectlError):
            raise result
        click.echo(result)
        return 0
    return _enqueue_lines(spool, sys.stdin, max_retries, cfg["max-job-bytes"])


def _accept(text, max_retries, max_bytes):
    """TEXT -> (job, not_before), through the parser and validator every worker uses, and refused
    if it is over max-job-bytes: better an error now than a silent rejection."""
    from queuectl import job as jobdoc
    from queuectl.timeutil import now

    accepted = jobdoc.accept(jobdoc.parse_text(text), now(), max_retries)
    jobdoc.check_size(accepted[0], max_bytes, len(text.encode("utf-8", "surrogatepass")))
    return accepted


def _enqueue_lines(spool, stream, max_retries, max_bytes, batch_size=1000):
    from queuectl.errors import JobInvalid

    status = 0
    batch = []

    def flush():
        nonlocal status
        results = spool.enqueue([acc for _, acc in batch])
        out = []
        for (lineno, _), result in zip(batch, results):
            if isinstance(result, QueuectlError):
                click.echo(f"queuectl: line {lineno}: {result}", err=True)
                status = max(status, result.exit_code)
            else:
                out.append(result)
        if out:
            sys.stdout.write("\n".join(out) + "\n")
            sys.stdout.flush()
        batch.clear()

    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            batch.append((lineno, _accept(line.rstrip("\r\n"), max_retries, max_bytes)))
        except JobInvalid as e:
            click.echo(f"queuectl: line {lineno}: {e}", err=True)
            status = 2
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return status


@cli.group()
def worker():
    """Start or stop worker processes.

    \b
    Example:
      queuectl worker start --count 4 --detach
      queuectl worker stop
    """


@worker.command("start")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1024), help="Number of worker processes.")
@click.option("--burst", is_flag=True, help="Exit once no job is due and none is running.")
@click.option("--detach", is_flag=True, help="Run in the background; return once every worker is registered.")
@click.pass_context
def worker_start(ctx, count, burst, detach):
    """Run COUNT workers until SIGINT/SIGTERM or `worker stop`.

    \b
    Example:
      queuectl worker start --count 4          # foreground; Ctrl-C stops after the current jobs
      queuectl worker start --burst            # run what is due, then exit
    """
    import os

    from queuectl import pool
    from queuectl.errors import SpoolError

    spool = _spool(ctx)
    if spool.system and os.geteuid() != 0:
        raise SpoolError(f"{spool.root} is a system spool: its workers run as root, each job as its owner (see README, Shared hosts)")
    return pool.start(spool, count, burst=burst, detach=detach)


class Duration(click.ParamType):
    """Seconds: a bare number, or a number with a unit (ms, s, m, h, d): 90, 1.5s, 15m, 2h, 7d.
    The one parser of every DURATION option (worker stop, wait, list --since)."""

    name = "duration"

    def convert(self, value, param, ctx):
        from queuectl.timeutil import parse_duration

        if isinstance(value, (int, float)):
            return float(value)
        seconds = parse_duration(value)
        if seconds is None:
            self.fail(f"{value!r} is not a duration: seconds (90), or with a unit (1.5s, 15m, 2h, 7d)", param, ctx)
        return seconds


@worker.command("stop")
@click.option("--timeout", type=Duration(), default="60s", show_default=True, metavar="DURATION",
              help="How long running jobs may take to finish; then a second SIGTERM stops them and puts them back in pending/.")
@click.option("--kill-after", type=Duration(), default="10s", show_default=True, metavar="DURATION",
              help="After the second SIGTERM, how long before workers still running are killed (SIGKILL).")
@click.pass_context
def worker_stop(ctx, timeout, kill_after):
    """Let every worker of this spool on this machine (its PID namespace: this container) finish
    its job and exit, whatever the host name is now; name them and wait for them.

    Workers still running after --timeout get a second SIGTERM (they stop their jobs and put them
    back in pending/), and SIGKILL --kill-after later (their jobs stay claimed until recovery counts
    them as lost); each escalation is one line on stderr. In a shared spool only your own workers
    are stopped (root stops all): other users' are named and left running. Exit status 0 if every
    worker of yours stopped within --timeout, 1 if it had to escalate, could not signal one, or
    found only other users' workers.

    \b
    Example:
      queuectl worker stop
      queuectl worker stop --timeout 5m --kill-after 30s
    """
    from queuectl import pool

    n, code = pool.stop(_spool(ctx), timeout=timeout, kill_after=kill_after)
    if n or code == 0:
        click.echo(f"queuectl: {n} worker(s) stopped" if n else "queuectl: no workers running", err=True)
    return code


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx, as_json):
    """Counts of jobs in each state, and the live workers.

    \b
    Example:
      queuectl status --json
    """
    from queuectl import views

    data = views.status(_spool(ctx))
    if as_json:
        _emit_json(data)
        return 0
    if data["paused"] is not None:
        click.echo(f"paused      {_pause_text(data['paused'])}")
    for state, n in data["counts"].items():
        click.echo(f"{state:<11} {n}")
    click.echo(f"workers     {len(data['workers'])}")
    for w in data["workers"]:
        click.echo(f"  {w['id']}  pid {w['pid']}  host {w['host']}  job {w['job'] or '-'}")
    for u in data["untrusted"]:
        click.echo(f"waiting     {u['pending']} pending job(s) of user {u['user']}: no running worker trusts {u['user']}")
    return 0


def _pause_text(info):
    by = info.get("by")
    if isinstance(by, dict):
        by = f"{by.get('user', '?')}@{by.get('host', '?')}"
    return f"since {info.get('since', '?')}" + (f" by {by}" if by else "")


@cli.command()
@click.pass_context
def pause(ctx):
    """Pause the whole spool: running jobs finish, no worker claims a new one until `resume`.

    New jobs are still accepted (enqueue, drop-ins) and wait in pending/. The pause is the file
    SPOOL/paused: it survives worker restarts and reboots. Already paused: a note, exit 0.

    \b
    Example:
      queuectl pause && queuectl status
    """
    import getpass
    import os
    import time

    from queuectl.procs import hostname
    from queuectl.timeutil import iso

    spool = _spool(ctx)
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid (a container without /etc/passwd): the uid will do
        user = str(os.geteuid())
    data = {"since": iso(time.time()), "by": {"user": user, "host": hostname()}}
    if spool.pause(json.dumps(data).encode()):
        click.echo("queuectl: paused: running jobs finish, nothing new starts until queuectl resume", err=True)
    else:
        info = spool.pause_info()
        click.echo(f"queuectl: already paused{' ' + _pause_text(info) if info else ''}", err=True)
    return 0


@cli.command()
@click.pass_context
def resume(ctx):
    """End a pause: workers claim due jobs again at once. Not paused: a note, exit 0.

    \b
    Example:
      queuectl resume
    """
    spool = _spool(ctx)
    info = spool.pause_info()
    if spool.resume():
        click.echo(f"queuectl: resumed (paused {_pause_text(info or {})})", err=True)
    else:
        click.echo("queuectl: not paused", err=True)
    return 0


@cli.command("list")
@click.option("--state", type=click.Choice(STATE_NAMES), help="Only jobs in this state.")
@click.option("--id", "id_glob", metavar="GLOB", help="Only jobs whose id matches GLOB (shell wildcards: 'backup-*'; rejected files: their name).")
@click.option("--since", type=Duration(), metavar="DURATION", help="Only jobs created within DURATION (30s, 15m, 2h, 7d; rejected files: rejected within it).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs (times absolute: started_at, finished_at, next_run_at).")
@click.option("--limit", type=click.IntRange(0), help="At most this many jobs (after the filters).")
@click.pass_context
def list_(ctx, state, id_glob, since, as_json, limit):
    """Jobs, oldest first, with when their latest attempt started and finished and when they run next.

    \b
    Example:
      queuectl list --state failed --limit 20
      queuectl list --id 'backup-*' --since 2h --json
    """
    from queuectl import views
    from queuectl.timeutil import now

    t = now()
    items = views.listing(_spool(ctx), state, limit, id_glob=id_glob, since=since, now=t)
    if as_json:
        _emit_json(items)
    else:
        _print_table(items, t)
    return 0


def _print_table(items, now):
    from queuectl.views import relative

    for j in items:
        if j["state"] == "rejected":
            click.echo(f"{j['name']!r:<40} rejected   {j['reason'] or ''}")
            continue
        err = j.get("last_error") or ("waiting for " + j["waiting_for"] if j.get("waiting_for") else "")
        times = f"started {relative(j.get('started_at'), now):<11} finished {relative(j.get('finished_at'), now):<11} next {relative(j.get('next_run_at'), now):<11}"
        click.echo(f"{j['id']:<28} {j['state']:<10} attempts {j.get('attempts', 0)}/{1 + j.get('max_retries', 0)}  {times} {j['command'][:40]!r}  {err[:60]}".rstrip())


@cli.command()
@click.argument("job_id", metavar="ID")
@click.pass_context
def show(ctx, job_id):
    """A job's JSON, with the history of its attempts.

    \b
    Example:
      queuectl show backup-1
    """
    from queuectl import views

    _emit_json(views.show(_spool(ctx), job_id))
    return 0


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Follow the running attempt's output as it grows; exit with its outcome.")
@click.option("--attempt", "attempt", type=click.IntRange(1), metavar="N", help="Attempt N's log (N counts every attempt the job had, across dlq retry).")
@click.option("--all", "all_", is_flag=True, help="Every attempt's log, each under a line '== attempt N (exit X, started T) =='.")
@click.pass_context
def logs(ctx, job_id, follow, attempt, all_):
    """The captured stdout and stderr of a job's latest attempt (or of another, or all of them).

    With -f, the output of the running attempt is printed as it is written, and the exit status
    is the attempt's outcome: 0 if it succeeded, else its exit code (1 when it has none: a
    timeout, a lost worker). A job that is not running: its latest log and outcome; a job that
    has not run yet: its first attempt, once it starts.

    \b
    Example:
      queuectl logs backup-1
      queuectl logs -f backup-1 && echo backup ok
      queuectl logs --attempt 2 backup-1
      queuectl logs --all backup-1
    """
    from queuectl import views

    if sum(map(bool, (follow, attempt is not None, all_))) > 1:
        raise BadInput("use one of -f/--follow, --attempt and --all")
    spool = _spool(ctx)
    out = sys.stdout.buffer
    if follow:
        return _follow(spool, job_id)
    if all_:
        for header, data in views.all_logs(spool, job_id):
            out.write(header.encode() + b"\n")
            if data:
                out.write(data if data.endswith(b"\n") else data + b"\n")
        out.flush()
        return 0
    if attempt is not None:
        data = views.attempt_log(spool, job_id, attempt)
        what = f"attempt {attempt} printed nothing"
    else:
        data = views.latest_log(spool, job_id)
        what = "it has not run yet, or its latest attempt printed nothing"
    if data is None:
        click.echo(f"queuectl: job {job_id}: no output ({what})", err=True)
        return 0
    out.write(data)
    out.flush()
    return 0


def _follow(spool, job_id):
    import time

    from queuectl import views
    from queuectl.watch import FolderEvents

    def write(data):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    events = FolderEvents([spool.folder_path(f) for f in views.LOGS_FOLDERS]).start()
    try:
        return views.follow(spool, job_id, write, events, time.monotonic, lambda text: click.echo(f"queuectl: {text}", err=True))
    finally:
        events.stop()


@cli.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--timeout", type=Duration(), metavar="DURATION", help="Give up after DURATION (30s, 15m, 2h, 7d): exit 124.")
@click.pass_context
def wait(ctx, ids, timeout):
    """Wait until every job given is completed or dead.

    Exit status 0 if all completed; 1 if any is dead or unknown (one line each on stderr); 124 if
    --timeout passed first. It sleeps on file-system events, not polling.

    \b
    Example:
      queuectl wait backup-1 report --timeout 2h && echo all done
    """
    import time

    from queuectl import views
    from queuectl.watch import FolderEvents

    spool = _spool(ctx)
    events = FolderEvents([spool.folder_path(f) for f in views.WAIT_FOLDERS]).start()
    try:
        return views.wait_jobs(spool, ids, events, time.monotonic, lambda text: click.echo(f"queuectl: {text}", err=True), timeout=timeout)
    finally:
        events.stop()


@cli.command()
@click.option("--state", "states", type=click.Choice(("completed", "dead", "rejected")), multiple=True,
              help="Only jobs in this state (repeatable); default: completed, dead and rejected.")
@click.option("--older-than", type=Duration(), default="0", metavar="DURATION",
              help="Only jobs that reached their state at least DURATION ago (30s, 15m, 2h, 7d); default: all.")
@click.option("--dry-run", is_flag=True, help="Remove nothing; say what would be freed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: jobs, files, bytes, dry_run.")
@click.pass_context
def purge(ctx, states, older_than, dry_run, as_json):
    """Remove finished jobs with their logs (every attempt) and their id reservations, and
    rejected files with their reasons. Never touches pending/ or processing/.

    A job's age is counted from when it entered done/ or dead/ (its file's mtime); a rejected
    file's from when it was rejected. Its id becomes free again: a later job may take it. Says
    how many jobs and files it removed and the disk space freed (blocks of files with no other
    link), or with --dry-run would.

    \b
    Example:
      queuectl purge --state completed --older-than 7d
      queuectl purge --older-than 30d --dry-run
    """
    from queuectl import retention
    from queuectl.timeutil import now

    freed = retention.purge(_spool(ctx), states or retention.STATES, older_than, now(), dry=dry_run)
    if as_json:
        _emit_json(dict(freed.as_dict(), dry_run=dry_run))
    else:
        verb = "would purge" if dry_run else "purged"
        click.echo(f"{verb} {freed.jobs} job(s): {freed.files} file(s), {freed.bytes} bytes")
    return 0


@cli.command()
@click.option("--textfile", metavar="PATH", help="Write to PATH atomically (a temporary file beside it, then a rename), for node_exporter's textfile collector.")
@click.pass_context
def metrics(ctx, textfile):
    """The spool's metrics in Prometheus' text format: jobs per state, the age of the oldest due
    job, live workers, whether it is paused, and attempts ended since the spool was made (by
    outcome: completed, failed, dead, cancelled), which survive worker restarts and purges.

    \b
    Example:
      queuectl metrics
      queuectl metrics --textfile /var/lib/node_exporter/textfile_collector/queuectl.prom
    """
    from queuectl import metrics as m
    from queuectl.settings import load
    from queuectl.timeutil import now

    spool = _spool(ctx)
    text = m.render(spool, load(spool.config_path), now())
    if textfile is None:
        click.echo(text, nl=False)
        return 0
    from queuectl.fsio import write_atomic

    try:
        write_atomic(textfile, text.encode(), 0o644)
    except OSError as e:
        raise QueuectlError(f"cannot write {textfile}: {e.strerror or e}") from None
    return 0


def _act_on_jobs(ids, as_json, act):
    """Run ACT(id) -> jobctl.Result for each of IDS; print one line per job (or a JSON array);
    exit 1 if any could not be acted on (one line on stderr each, why), else 0."""
    from queuectl.errors import QueuectlError as Error

    out, failed = [], False
    for job_id in dict.fromkeys(ids):
        try:
            r = act(job_id)
        except BadInput:
            raise
        except (Error, OSError) as e:  # one job the spool refuses does not stop the others
            failed = True
            why = str(e) if isinstance(e, Error) else f"job {job_id!r}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
            click.echo(f"queuectl: {why}", err=True)
            out.append({"id": job_id, "ok": False, "error": why})
            continue
        out.append({"id": r.id, "ok": True, "state": r.state, "note": r.note})
        if not as_json:
            click.echo(f"{r.id}: {r.note}" if r.note else r.id)
    if as_json:
        _emit_json(out)
    return 1 if failed else 0


@cli.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--timeout", type=Duration(), default="30s", show_default=True, metavar="DURATION",
              help="How long to wait for the worker of a running job to stop it.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array: one {id, ok, state, note or error} per job.")
@click.pass_context
def cancel(ctx, ids, timeout, as_json):
    """Cancel jobs for good: they go to the dead-letter queue with last_error "cancelled", and
    never run again unless `retry` or `dlq retry` revives them.

    A pending, failed or held job moves at once. A running job is stopped by its worker, wherever
    it runs (a request in SPOOL/requests/): its whole process tree gets SIGTERM, then SIGKILL 2 s
    later, and the attempt ends cancelled; this waits for that (--timeout). A completed or dead job
    is left alone. Exit status 0 if every job given was cancelled, else 1 (one line on stderr each).

    \b
    Example:
      queuectl cancel backup-1 report
      queuectl cancel --timeout 2m --json nightly
    """
    import time

    from queuectl import jobctl
    from queuectl.watch import FolderEvents

    spool = _spool(ctx)

    def events(folders):
        return FolderEvents([spool.folder_path(f) for f in folders]).start()

    return _act_on_jobs(ids, as_json, lambda i: jobctl.cancel(spool, i, time.time(), time.monotonic, events, timeout))


@cli.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array: one {id, ok, state, note or error} per job.")
@click.pass_context
def hold(ctx, ids, as_json):
    """Put jobs on hold: no worker claims them until `release` (they wait in SPOOL/held/).

    A running job is held when its attempt ends, if it would be retried; one that completes or
    dies stays so. Exit status 0 if every job given is (or will be) held, else 1.

    \b
    Example:
      queuectl hold nightly && queuectl list --state held
    """
    import time

    from queuectl import jobctl

    spool = _spool(ctx)
    return _act_on_jobs(ids, as_json, lambda i: jobctl.hold(spool, i, time.time()))


@cli.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array: one {id, ok, state, note or error} per job.")
@click.pass_context
def release(ctx, ids, as_json):
    """Release held jobs: pending again, keeping their attempts and their next run time (due at
    once if it has passed). For a running job, its hold request is withdrawn. Exit status 0 if
    every job given was held, else 1.

    \b
    Example:
      queuectl release nightly
    """
    from queuectl import jobctl

    spool = _spool(ctx)
    return _act_on_jobs(ids, as_json, lambda i: jobctl.release(spool, i))


@cli.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array: one {id, ok, state, note or error} per job.")
@click.pass_context
def retry(ctx, ids, as_json):
    """Run jobs as soon as a worker is free: a failed job waiting for its back-off (or a job
    scheduled for later) becomes due now, keeping its attempts; a held job is released, due now;
    a dead job goes back to pending with attempts 0, as `dlq retry`. A running or completed job
    is left alone. Exit status 0 if every job given is due now, else 1.

    \b
    Example:
      queuectl retry report backup-1
    """
    import time

    from queuectl import jobctl

    spool = _spool(ctx)
    return _act_on_jobs(ids, as_json, lambda i: jobctl.retry(spool, i, time.time()))


@cli.group()
def dlq():
    """The dead-letter queue: jobs that failed every attempt.

    \b
    Example:
      queuectl dlq list
      queuectl dlq retry --all
    """


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
@click.option("--limit", type=click.IntRange(0), help="At most this many jobs (the oldest).")
@click.pass_context
def dlq_list(ctx, as_json, limit):
    """The dead jobs, oldest first.

    \b
    Example:
      queuectl dlq list --json
      queuectl dlq list --limit 20
    """
    from queuectl import views

    from queuectl.timeutil import now

    t = now()
    items = views.listing(_spool(ctx), "dead", limit, now=t)
    if as_json:
        _emit_json(items)
    else:
        _print_table(items, t)
    return 0


@dlq.command("retry")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.option("--all", "all_", is_flag=True, help="Retry every dead job.")
@click.pass_context
def dlq_retry(ctx, ids, all_):
    """Move dead jobs back to pending with attempts reset to 0.

    Only your own jobs (root: anyone's, which stay their owner's): another user's job named by id
    is an error; --all skips them and says how many and whose.

    \b
    Example:
      queuectl dlq retry backup-1
      queuectl dlq retry --all
    """
    from queuectl import dlq as dlqmod

    if not ids and not all_:
        raise BadInput("name the jobs to retry, or use --all")
    spool = _spool(ctx)
    retried, errors, notes = dlqmod.retry(spool, ids, all_)
    for job_id in retried:
        click.echo(job_id)
    for note in notes:
        click.echo(f"queuectl: {note}", err=True)
    for e in errors:
        click.echo(f"queuectl: {e}", err=True)
    return 1 if errors else 0


@cli.group()
def config():
    """Read and change settings; running workers pick up changes without a restart.

    \b
    Example:
      queuectl config set max-retries 5
      queuectl config get backoff-base
    """


@config.command("set", context_settings={"ignore_unknown_options": True})  # so that "-1" is a VALUE
@click.argument("key")
@click.argument("value")
@click.pass_context
def config_set(ctx, key, value):
    """Set KEY to VALUE.

    \b
    Example:
      queuectl config set backoff-base 3
    """
    from queuectl import settings

    from queuectl.owners import check_may_configure

    spool = _spool(ctx)
    check_may_configure(spool.root, spool.config_path)  # who may, before the lock is looked at
    settings.set_value(spool.config_path, key, value, lock=spool.lock_path())
    return 0


@config.command("get")
@click.argument("key")
@click.pass_context
def config_get(ctx, key):
    """Print the value of KEY.

    \b
    Example:
      queuectl config get max-retries
    """
    from queuectl import settings

    click.echo(settings.get(_spool(ctx).config_path, key))
    return 0


@config.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def config_list(ctx, as_json):
    """Every setting with its value.

    \b
    Example:
      queuectl config list --json
    """
    from queuectl import settings

    values = settings.load(_spool(ctx).config_path)
    if as_json:
        _emit_json(values)
        return 0
    for s in settings.TABLE:
        click.echo(f"{s.key:<18} {values[s.key]!s:<10} {s.help} (default {s.default})")
    return 0


def main(argv=None):
    """Run the CLI; the only place where errors become exit codes and one-line messages."""
    try:
        rv = cli.main(args=argv, prog_name="queuectl", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("queuectl: aborted", err=True)
        sys.exit(1)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group (click >= 8.2): its help, undecorated
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(2)
        where = e.ctx.command_path if e.ctx else "queuectl"
        click.echo(f"{where}: {e.format_message()} (see {where} --help)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"queuectl: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except QueuectlError as e:
        click.echo(f"queuectl: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        from queuectl.spool import explain  # whose the path is, its mode, what to do

        e = explain(e)
        where = f" ({e.filename})" if e.filename else ""
        click.echo(f"queuectl: {e.strerror or e}{where}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
