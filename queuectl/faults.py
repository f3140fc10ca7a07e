"""How a worker meets file-system faults (full disk, read-only spool, EMFILE): it says so once,
and holds back new claims with a wait that doubles while the fault lasts."""

import time

FAULT_BACKOFF_MAX = 5  # seconds; a worker facing a file-system fault waits, doubling up to this
FAULT_RELOG = 600  # seconds before the same fault is logged again


class Faults:
    """File-system faults met by the worker's steps: each distinct error is logged once every
    FAULT_RELOG seconds, and claims are held back with a wait that doubles while the fault lasts
    (events cannot cut it short)."""

    def __init__(self, log):
        self.log = log
        self.delay = 0.0
        self.hold_until = 0.0  # monotonic
        self._logged = {}  # message -> when it was last logged

    def report(self, action, error):
        msg = f"cannot {action}: {error.strerror or error}"
        now = time.monotonic()
        if now - self._logged.get(msg, -FAULT_RELOG) >= FAULT_RELOG:
            self._logged[msg] = now
            self.log(msg + " (will keep trying)")
        self.delay = min(max(self.delay * 2, 0.1), FAULT_BACKOFF_MAX)
        self.hold_until = time.monotonic() + self.delay

    def cleared(self):
        self.delay = 0.0

    def forget(self):
        """Log every fault again (the spool came back: what follows is news)."""
        self._logged.clear()
