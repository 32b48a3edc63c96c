"""Structured logging: JSON lines in production, readable console lines in development.

Every line carries the service name and, inside a request, the request id and (once known) the
user, through structlog's context variables. Standard-library loggers (uvicorn, SQLAlchemy,
Alembic) go through the same processors, so the whole process speaks one format. structlog's own
lines (the access line of every request among them) are rendered by structlog and written
straight to stderr, without a trip through the standard library's records and handlers, which
cost as much again per line.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from botocore.exceptions import ClientError as BotoClientError
from sqlalchemy.exc import StatementError
from structlog.typing import EventDict, WrappedLogger

# Keys whose values never reach a log line, wherever they appear.
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "cookie",
        "set-cookie",
        "password",
        "current_password",
        "new_password",
        "token",
        "access_token",
        "refresh_token",
        "api_token",
        "secret",
        "secret_key",
        "x-amz-security-token",
        "url",
        "query_string",
    }
)
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """A copy of `value` with sensitive keys masked, at any depth of dicts and lists."""
    if isinstance(value, MutableMapping):
        return {k: REDACTED if str(k).lower() in SENSITIVE_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _redact_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return redact(event_dict)  # type: ignore[no-any-return]


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is written, not when logging was set up."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


class _StderrLogger:
    """Where structlog's rendered lines go: whatever `sys.stderr` is when a line is written, a line at a time."""

    _lock = threading.Lock()  # lines from threads never interleave

    def __init__(self, name: str = "root") -> None:
        self.name = name  # `logger` in every line, as the standard library's loggers have it

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(service: str, *, fmt: Literal["json", "console"] = "console", level: str = "INFO") -> None:
    """Set up structlog and the standard library for one service process."""

    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    if fmt == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=_StderrLogger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        # Not cached: a reconfiguration (a second app in one process, as in tests) must take effect.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _CurrentStderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log would repeat ours without the request id; its errors stay.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("botocore", "aiobotocore", "urllib3", "httpx", "httpcore", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


MAX_ERROR_MESSAGE = 300  # characters of an error's message kept in a log line or a job's `last_error`


def describe_error(error: BaseException) -> str:
    """A short, single-line description of an error (its type and message), safe to log or store.

    A database error is described without its SQL and its parameters (which may hold a token's
    digest or a password hash): by its driver's message only.
    """
    message = " ".join(_message(error).split())
    line = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return line if len(line) <= MAX_ERROR_MESSAGE else line[: MAX_ERROR_MESSAGE - 1] + "…"


def error_fields(error: BaseException) -> dict[str, str]:
    """The log fields of an error: `error_type`, `error_code` (the S3 error code or the SQLSTATE,
    when there is one) and `error` (`describe_error`)."""
    fields = {"error_type": type(error).__name__}
    code = _error_code(error)
    if code:
        fields["error_code"] = code
    fields["error"] = describe_error(error)
    return fields


def _message(error: BaseException) -> str:
    if isinstance(error, StatementError):  # its own text quotes the statement and its parameters
        original = error.orig
        first_line = str(original).splitlines()[0] if str(original) else ""
        return f"{type(original).__name__}: {first_line}" if original is not None else "database error"
    return str(error)


def _error_code(error: BaseException) -> str | None:
    if isinstance(error, BotoClientError):
        code = error.response.get("Error", {}).get("Code")
        return str(code) if code else None
    original = error.orig if isinstance(error, StatementError) else error
    sqlstate = getattr(original, "sqlstate", None) or getattr(getattr(original, "__cause__", None), "sqlstate", None)
    return str(sqlstate) if sqlstate else None
