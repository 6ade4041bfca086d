"""One error hierarchy: every message names the file, row or option and says what to do.

Subclasses also inherit the matching built-in so callers can catch either. The CLI turns any
``CxrprobeError`` into a one-line ``click.ClickException``.
"""


class CxrprobeError(Exception):
    """Base class of every error cxrprobe raises on purpose."""


class InputFileError(CxrprobeError, FileNotFoundError):
    """A file the user named is missing or unreadable."""


class DataFormatError(CxrprobeError, ValueError):
    """A file exists but its content is not what the format requires (names the row/column)."""


class LeakageError(DataFormatError):
    """A patient has images in more than one split (refused unless ``--allow-leakage``)."""


class DecodeError(CxrprobeError, ValueError):
    """An image could not be decoded (corrupt, unsupported transfer syntax, empty)."""


class ConfigError(CxrprobeError, ValueError):
    """Options or a config file that contradict each other or name unknown things."""


class StoreMismatchError(CxrprobeError, ValueError):
    """An existing store was made with a different model, manifest or settings."""


class IncompleteStoreError(CxrprobeError, RuntimeError):
    """A store has rows that were never written (a run was interrupted: run it again)."""


class WeightsError(CxrprobeError, FileNotFoundError):
    """Pretrained weights are missing, unreachable offline or incompatible with the model."""


class MissingDependencyError(CxrprobeError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


class OutputError(CxrprobeError, OSError):
    """An output cannot be written where asked: read-only, full disk, a file where a folder is
    expected, or an existing folder that ``--overwrite`` must not replace."""


class OutputLockedError(CxrprobeError, RuntimeError):
    """Another process is writing the same output (the message names its pid and host)."""
