"""Errors shared by the stores, the connection manager and the API."""


class StoreUnavailable(Exception):
    """The store cannot be reached or used (connection refused, lost, file unwritable)."""


class CommitInDoubt(StoreUnavailable):
    """The connection broke during COMMIT: the write may or may not be in PostgreSQL."""


class Conflict(Exception):
    """A unique constraint refused the write (e.g. an alert id that already exists)."""


class Rejected(Exception):
    """The store refused a value the API's own checks let through (should not happen)."""


class ReadOnlyQuery(Exception):
    """query() was given a statement that writes; writes go through insert()/update()."""
