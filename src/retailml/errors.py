"""Errors a user can cause. The CLI prints them as one line; anything else is a bug."""


class RetailmlError(Exception):
    """A problem the user can fix: bad input, a bad setting, a missing prerequisite."""


class SettingsError(RetailmlError):
    """An unknown setting, an invalid value, or an unreadable settings file."""


class SetupError(RetailmlError):
    """Something the install step should have provided is missing (for example the Delta jars)."""


class InputError(RetailmlError):
    """Source data that cannot be ingested: missing files or columns, an unknown layout."""


class TableNotFoundError(RetailmlError):
    """A task needs a table that an earlier task has not written yet."""


class QualityGateError(RetailmlError):
    """A new batch breached a data-quality gate; nothing of it reached silver."""
