"""Wake-ups on file-system events (watchdog: inotify): an idle worker's on pending/, through a pipe,
and FolderEvents for commands that wait on the spool (`wait`, `logs -f`).

The worker sleeps in select() on this pipe and on the signal wakeup pipe, so one loop handles new
jobs, timers and stop signals without polling.
"""

import os
from collections import deque


def _no_move_pairing_delay():
    """watchdog holds every IN_MOVED_FROM for 0.5 s to pair it with an IN_MOVED_TO, and its queue is
    FIFO: each claim (a rename out of pending/) would delay the news of the next new job by up to
    half a second. We never need the pairing, so we turn the delay off."""
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

        InotifyMoveEventGrouper.delay = 0.0
    except ImportError:
        pass
    try:
        from watchdog.observers.inotify_buffer import InotifyBuffer

        InotifyBuffer.delay = 0.0
    except ImportError:
        pass


def _arrivals_observer():
    """An observer that asks inotify for arrivals in pending/ only: a file renamed in
    (IN_MOVED_TO), closed after writing (IN_CLOSE_WRITE) or created (IN_CREATE: not a regular
    file, or a writer ignoring the tmp/ rule). Every claim renames a file out of pending/; with the
    default mask each claim would cost every worker an event to decode and drop."""
    from watchdog.events import DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileMovedEvent
    from watchdog.observers import Observer

    # DirMovedEvent: a folder renamed into pending/ must be seen (and rejected) at once too
    filters = [FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileClosedEvent]
    try:
        from watchdog.observers.inotify import InotifyEmitter, InotifyFullEmitter
        from watchdog.observers.inotify_c import InotifyConstants as C

        class ArrivalsEmitter(InotifyFullEmitter):  # "full": a rename in is "moved", not "created"
            def get_event_mask_from_filter(self):
                return C.IN_MOVED_TO | C.IN_CLOSE_WRITE | C.IN_CREATE | C.IN_DELETE_SELF

        observer = Observer()
        if hasattr(InotifyEmitter, "get_event_mask_from_filter") and hasattr(observer, "_emitter_class"):
            observer._emitter_class = ArrivalsEmitter
        return observer, filters
    except ImportError:  # not Linux: the platform's observer with watchdog's own mask
        return Observer(), filters


def _stop_observer(observer):
    if observer is not None:
        try:
            observer.stop()
            observer.join(timeout=2)
        except Exception:  # a failing observer must not turn a clean exit into a crash
            pass


class PendingWatcher:
    def __init__(self, folder):
        self.folder = folder
        self.names = deque()
        self.rfd, self._wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self._wfd, False)
        self._observer = None

    def start(self):
        _no_move_pairing_delay()
        import logging

        # watchdog logs an error when its thread stops mid-read; the worker logs what matters itself
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                path = getattr(event, "dest_path", "") or event.src_path
                if isinstance(path, bytes):
                    path = os.fsdecode(path)
                if os.path.dirname(path) == watcher.folder and event.event_type in ("created", "moved", "closed"):
                    watcher.names.append((os.path.basename(path), event.event_type))
                    watcher.poke()

        self._observer, filters = _arrivals_observer()
        try:
            self._observer.schedule(Handler(), self.folder, recursive=False, event_filter=filters)
        except TypeError:  # watchdog < 4 has no event_filter
            self._observer.schedule(Handler(), self.folder, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def poke(self):
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full or closed: the worker is awake anyway

    def clear(self):
        """Empty the wake-up pipe (the names stay queued): after the sleeper woke."""
        try:
            while os.read(self.rfd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def drain(self):
        """(name, event type) reported since the last call (may repeat, may be gone already).

        Names are queued before the pipe is poked, so an empty queue needs no system call."""
        out = []
        while self.names:
            out.append(self.names.popleft())
        return out

    def stop(self):
        _stop_observer(self._observer)
        for fd in (self.rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class FolderEvents:
    """Wake-ups for a command that waits on the spool (`wait`, `logs -f`): any file-system event in
    FOLDERS (inotify through watchdog) sets a flag that wait() returns on. The caller re-checks
    the spool itself after each wake-up, and on wait()'s timeout (a safety re-check): events only
    say when to look, never what is true."""

    def __init__(self, folders):
        import threading

        self.folders = list(folders)
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._changed = set()
        self._observer = None

    def start(self):
        _no_move_pairing_delay()  # a job renamed into done/ must wake us now, not 0.5 s later
        import logging

        logging.getLogger("watchdog").setLevel(logging.CRITICAL)
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        events = self

        class Handler(FileSystemEventHandler):
            def __init__(self, folder):
                super().__init__()
                self.folder = folder

            def on_any_event(self, event):
                with events._lock:
                    events._changed.add(self.folder)
                events._event.set()

        try:
            self._observer = Observer()  # its inotify instance is made here (watchdog >= 5)
            for folder in self.folders:
                self._observer.schedule(Handler(folder), folder, recursive=False)
            self._observer.daemon = True
            self._observer.start()
        except OSError:  # no inotify instance to be had (fs.inotify.max_user_instances): look often
            _stop_observer(self._observer)
            self._observer, self.polling = None, True
        return self

    polling = False  # no events: wait() returns every POLL_SECONDS, as if every folder changed
    POLL_SECONDS = 0.25

    def wait(self, timeout):
        """Block until an event or TIMEOUT seconds; the set of folders that changed (maybe empty)."""
        if self.polling:
            self._event.wait(min(timeout, self.POLL_SECONDS))
            return set(self.folders)
        self._event.wait(timeout)
        with self._lock:
            self._event.clear()
            changed, self._changed = self._changed, set()
        return changed

    def stop(self):
        _stop_observer(self._observer)


def poke_on_events(folder, fd):
    """Write a byte to FD at every file-system event in FOLDER (requests/: a worker running a job
    wakes when `queuectl cancel` asks, and looks for the request itself). Returns the observer
    (stop it with stop_observer)."""
    _no_move_pairing_delay()
    import logging

    logging.getLogger("watchdog").setLevel(logging.CRITICAL)
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            try:
                os.write(fd, b"r")
            except OSError:
                pass  # the pipe is full: the worker is being woken anyway

    observer = Observer()
    observer.schedule(Handler(), folder, recursive=False)
    observer.daemon = True
    observer.start()
    return observer


def stop_observer(observer):
    _stop_observer(observer)
