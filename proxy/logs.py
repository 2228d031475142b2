"""Logging: structlog configured once at start; stdlib loggers (aiohttp, redis) share its renderer.

JSON lines when stdout is not a terminal, readable console output when it is. A last processor
replaces any configured secret (API keys, the admin token, the Redis password) that would
otherwise reach a log line, whatever logger produced it.

Every line goes through one `LineSink`. The canonical line per request (`access_line`) is the
hot path: in JSON mode it is rendered straight to JSON (the same fields structlog would write)
and buffered, written at most `FLUSH_DELAY` seconds later in one write with the lines beside it;
any other line writes the buffer first, so lines keep their order.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
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


FLUSH_DELAY = 0.1  # seconds an access line may wait in the buffer
FLUSH_BYTES = 64 * 1024  # a buffer this large is written at once


class LineSink:
    """Lines to a text stream: buffered lines in batches, urgent lines (and the batch) at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._buffer: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: bytes) -> None:
        """Buffer one line (ending in a newline): written within `FLUSH_DELAY` seconds."""
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop to flush later: write now
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_DELAY, self.flush)

    def write(self, text: str) -> None:
        """Write `text` now, after whatever is buffered."""
        if self._buffer:
            self._buffer.append(text.encode("utf-8", "replace"))
            self.flush()
        else:
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self.stream.write(data.decode("utf-8", "replace"))
            self.stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: nothing left to log to
            pass


class _SinkLogger:
    """structlog's final logger: each rendered line goes to the sink at once."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write(message + "\n")

    log = debug = info = warn = warning = err = error = critical = exception = failure = fatal = msg


class _SinkStream:
    """The stdlib handler's stream: what it writes goes through the sink too."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def write(self, text: str) -> None:
        self._sink.write(text)

    def flush(self) -> None:
        self._sink.flush()


class _IsoClock:
    """`2026-11-26T06:29:33.123456Z`, as structlog's TimeStamper writes it, at a fraction of its cost."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"


class AccessLineWriter:
    """Renders the per-request line straight to JSON into a `LineSink` (JSON mode only)."""

    def __init__(self, sink: LineSink, redactor: SecretRedactor) -> None:
        self._sink = sink
        self._redactor = redactor
        self._clock = _IsoClock()

    def __call__(self, fields: dict[str, Any]) -> None:
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = self._clock()
        if self._redactor.secrets:
            _scrub(fields, self._redactor.secrets)
        self._sink.add(orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE))


_access_writer: AccessLineWriter | None = None
_sinks: list[LineSink] = []
_request_log = structlog.get_logger("proxy.request")


def access_line(fields: dict[str, Any]) -> None:
    """Log the canonical line of one request (`event: request`) with `fields`."""
    if _access_writer is not None:
        _access_writer(fields)
    else:  # console output, or logging not configured (tests capture structlog's events)
        _request_log.info("request", **fields)


def flush_logs() -> None:
    """Write buffered lines now (at shutdown; also registered with atexit)."""
    for sink in _sinks:
        sink.flush()


atexit.register(flush_logs)


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
    global _access_writer
    flush_logs()
    sink = LineSink(stream)
    _sinks[:] = [sink]
    _access_writer = AccessLineWriter(sink, redactor) if as_json else None
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: _SinkLogger(sink),
        cache_logger_on_first_use=True,
    )
    handler: logging.StreamHandler[Any] = logging.StreamHandler(_SinkStream(sink))
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
