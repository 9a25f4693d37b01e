"""Error classes that steer message handling.

Handlers raise these (directly or via helpers) and the bus runner in `libs.common.bus` maps them onto JetStream
acknowledgements: a `TransientError` is negatively acknowledged with a back-off delay so the message comes back,
a `PermanentError` terminates the message (no redelivery) and its reason is logged and, where a document exists,
recorded on it. Anything else is treated as transient, bounded by the consumer's `max_deliver`.
"""

from __future__ import annotations


class CarinaError(Exception):
    """Base class of every error Carina raises on purpose."""


class TransientError(CarinaError):
    """A failure that may go away by itself (a dependency is down, a conflict, a timeout).

    Args:
        message: what went wrong, for the log.
        delay: seconds to wait before the message is redelivered; None lets the runner pick a back-off.
    """

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(CarinaError):
    """A failure that retrying cannot fix (bad input, unknown environment, invalid configuration)."""


class ConflictError(TransientError):
    """A compare-and-set update lost the race; reload the document and try again."""


class NotFoundError(PermanentError):
    """The document a message refers to does not exist."""


class ValidationFailed(PermanentError):
    """User input was rejected; `problems` lists `(path, message)` pairs suitable for an API answer."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class StartupError(CarinaError):
    """A dependency (NATS, MongoDB) did not come up within the start-up deadline."""


class OperationRefused(PermanentError):
    """A valid request that the environment's current state refuses (an operation is running, nothing to remove)."""
