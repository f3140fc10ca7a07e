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


class DuplicateId(QueuectlError):
    """The id is taken by a job in some state."""


class SpoolError(QueuectlError):
    """The file system refused an operation on the spool (full disk, read-only, permissions)."""


class NotYours(QueuectlError):
    """In a system spool: the job belongs to another user (exit 1)."""
