"""The project's own error types.

Every error a user can cause or meet (bad input, missing weights, bad config)
is a :class:`LowkeydError`; the CLI prints its message on one line and exits
with its ``exit_code``. Anything else escaping is a bug.
"""


class LowkeydError(Exception):
    """An error with a message fit to show a user on one line."""

    exit_code: int = 1


class WeightsError(LowkeydError):
    """A weight file could not be found, fetched or verified."""


class PhotoError(LowkeydError):
    """A photo could not be read, understood or written."""


class WriteError(PhotoError):
    """A photo could not be written; ``errno`` says why (a full disk passes, a bad photo does not)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class EngineError(LowkeydError):
    """The cloaking engine could not process an image."""


class ConfigError(LowkeydError):
    """The configuration is invalid. 78 is EX_CONFIG, which systemd is told not to restart on."""

    exit_code = 78
