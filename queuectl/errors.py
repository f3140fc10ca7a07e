"""The error hierarchy. The CLI maps each class to an exit code in one place (cli.main)."""


class QueuectlError(Exception):
    """An operational error: the request was fine but could not be carried out (exit 1)."""

    exit_code = 1


class BadInput(QueuectlError):
    """The user's input is wrong: bad JSON, bad id, wrong type, unknown key (exit 2)."""

    exit_code = 2


class JobInvalid(BadInput):
    """A job document that does not follow spool_layout.md."""


class NotFound(QueuectlError):
    """No job with that id (in the states asked about)."""


class Refused(QueuectlError):
    """The job is in a state a command does not act on (`cancel` of a completed job...)."""


class DuplicateId(QueuectlError):
    """The id is taken by a job in some state."""


class SpoolError(QueuectlError):
    """The file system refused an operation on the spool (full disk, read-only, permissions)."""


class Untrusted(QueuectlError):
    """A job file whose owner this worker does not trust: not a fault of the job, so it is left
    where it is for a worker that trusts its owner (never rejected). UID: that owner."""

    def __init__(self, message, uid=None):
        super().__init__(message)
        self.uid = uid


class NotYours(QueuectlError):
    """The job (or file) belongs to another user, and this process may not act on it (exit 1)."""
