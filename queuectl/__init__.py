"""queuectl: a job queue for shell commands on a maildir-style spool."""

__version__ = "0.1.0"
