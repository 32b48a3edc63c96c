"""The client's errors, each with the exit code the `depot` command ends with."""

from __future__ import annotations

from typing import Any


class DepotError(Exception):
    """Something failed; `exit_code` is what the command exits with (1: failed)."""

    exit_code = 1

    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem = problem or {}


class UsageError(DepotError):
    """The request was refused as given (bad arguments, invalid input: `400`)."""

    exit_code = 2


class AuthenticationError(DepotError):
    """Not logged in, a credential that is refused (`401`) or an action not allowed (`403`)."""

    exit_code = 3


class NotFoundError(DepotError):
    """No such package, version, user or token, or one the caller may not read (`404`)."""

    exit_code = 4


class ConflictError(DepotError):
    """The registry's current state forbids it (`409`): a version already published, say."""

    exit_code = 5


class RejectedError(DepotError):
    """Validation rejected the version; `report` holds the validator's report."""

    exit_code = 6

    def __init__(self, message: str, *, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class IntegrityError(DepotError):
    """The bytes received do not match the version's sha256 (nothing is kept)."""


EXIT_CODES = {
    0: "done",
    1: "failed",
    2: "usage",
    3: "authentication",
    4: "not found",
    5: "conflict",
    6: "rejected by validation",
}


def error_for_status(status: int, message: str, problem: dict[str, Any] | None = None) -> DepotError:
    """The error that an HTTP error status stands for."""
    kind: type[DepotError]
    if status in {401, 403}:
        kind = AuthenticationError
    elif status == 404:
        kind = NotFoundError
    elif status == 409:
        kind = ConflictError
    elif status == 400:
        kind = UsageError
    else:
        kind = DepotError
    return kind(message, status=status, problem=problem)
