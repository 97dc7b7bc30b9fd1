"""The project's own exception types.

Every error caused by bad input (a missing or malformed file, an unknown name, a bad flag,
a checksum mismatch) is a `MetaSelectorError`; the command line prints its message on one
line and exits with status 2, without a traceback.
"""


class MetaSelectorError(Exception):
    """Base class: a problem the user can fix, reported in one line."""


class InputError(MetaSelectorError):
    """A file, field or value does not have the expected form."""


class ChecksumError(MetaSelectorError):
    """A downloaded or local file does not match its published checksum."""


class DownloadError(MetaSelectorError):
    """A file could not be fetched from its source."""


class ConfigError(MetaSelectorError):
    """A configuration file or option is invalid."""


class IncompleteDownload(DownloadError):
    """The connection dropped mid-file; the partial file is kept for the next run to resume."""


class NotFittedError(MetaSelectorError):
    """An estimator was used before `fit` or `load`."""
