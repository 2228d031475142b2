"""Logging: structlog configured once at start; stdlib loggers (aiohttp, redis) share its renderer.

JSON lines when stdout is not a terminal, readable console output when it is. A last processor
replaces any configured secret (API keys, the admin token, the Redis password) that would
otherwise reach a log line, whatever logger produced it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor

REDACTED = "[redacted]"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class SecretRedactor:
    """A processor that replaces every occurrence of the given secrets in string values."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True))

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if self.secrets:
            _scrub(event_dict, self.secrets)
        return event_dict


def _scrub(mapping: MutableMapping[str, Any], secrets: tuple[str, ...]) -> None:
    for name, value in mapping.items():
        if isinstance(value, str):
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            mapping[name] = value


def _json_dumps(event_dict: EventDict, **_: Any) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def configure_logging(
    level: str = "info", fmt: str = "auto", *, secrets: Iterable[str | None] = (), stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib root logger. Call once, at start-up, never at import.

    Logs go to stdout when serving, to stderr for the one-shot commands (whose stdout is JSON)."""
    stream = sys.stdout if stream is None else stream
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    redactor = SecretRedactor(secrets)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redactor, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # aiohttp's own access log is replaced by the proxy's canonical line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_malformed_request_filter)


def _malformed_request_filter(record: logging.LogRecord) -> bool:
    """A malformed request from a client is answered 400 by aiohttp; log one line, not a traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.msg = "rejected a malformed HTTP request: %s"
        record.args = (str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__,)
        record.exc_info = None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True
