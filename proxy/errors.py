"""The project's own exceptions. Only the HTTP edge (`middleware.py`) maps them to status codes."""

from __future__ import annotations


class ProxyError(Exception):
    """Base class of every error the proxy raises on purpose."""


class ConfigError(ProxyError):
    """Start-up configuration is unusable; the message is one line naming what and why."""


class SettingsError(ConfigError):
    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"invalid setting {variable}: {reason}")
        self.variable = variable
        self.reason = reason


class RouteFileError(ConfigError):
    def __init__(self, path: str, where: str, reason: str) -> None:
        super().__init__(f"invalid route file {path}: {where}: {reason}")
        self.where = where
        self.reason = reason


class StoreError(ProxyError):
    """The cache store failed (connection refused, timeout, protocol error)."""


class EntryDecodeError(ProxyError):
    """A stored entry is corrupt, truncated or of another format version."""


class ClientRequestError(ProxyError):
    """The client's request is refused; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers = headers or {}


class UpstreamError(ProxyError):
    """The upstream could not be reached or did not answer in time."""

    status = 502


class UpstreamConnectError(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504
