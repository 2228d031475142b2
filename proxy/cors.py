"""CORS for browser frontends: preflights answered by the proxy, allowed origins only.

A request with an `Origin` the proxy does not allow is refused (403, no CORS headers) before
anything is forwarded, so a page on another site cannot spend the upstream's money through a
visitor's browser; requests without `Origin` (servers, curl) are not CORS requests at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.constants import CACHE_STATUS, REQUEST_ID, X_CACHE, X_CACHE_INPUTS

EXPOSED_HEADERS = (X_CACHE, CACHE_STATUS, "Age", REQUEST_ID, X_CACHE_INPUTS, "Retry-After")
# Request headers a browser may send (besides the CORS-safelisted ones). The OpenAI JS SDK adds
# its `x-stainless-*` headers to every request, so that prefix is allowed too.
BASE_ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "cache-control",
        "pragma",
        "x-request-id",
        "x-cache-ttl",
        "x-proxy-key",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "user-agent",
    }
)
ALLOWED_HEADER_PREFIXES = ("x-stainless-",)
PREFLIGHT_MAX_AGE = 600


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]

    @classmethod
    def from_origins(cls, origins: Iterable[str]) -> CorsPolicy:
        return cls(frozenset(origin.rstrip("/") for origin in origins))

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in self.origins

    def preflight_headers(
        self, origin: str, methods: Iterable[str], requested_headers: str, extra_headers: Iterable[str] = ()
    ) -> CIMultiDict[str] | None:
        """Headers of the answer to a preflight, or None when a requested header is not allowed."""
        allowed = BASE_ALLOWED_HEADERS | {name.lower() for name in extra_headers}
        requested = [name.strip().lower() for name in requested_headers.split(",") if name.strip()]
        if any(name not in allowed and not name.startswith(ALLOWED_HEADER_PREFIXES) for name in requested):
            return None
        headers = self.response_headers(origin)
        headers["Access-Control-Allow-Methods"] = ", ".join(sorted(methods))
        if requested:
            headers["Access-Control-Allow-Headers"] = ", ".join(requested)
        headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        return headers

    def add_response_headers(self, headers: CIMultiDict[str], origin: str) -> None:
        """Add an allowed origin's headers to an answer's: `Vary` keeps what the answer
        already varies on (`Accept-Encoding, Origin`)."""
        vary = headers.get("Vary")
        headers.update(self.response_headers(origin))
        if vary and "origin" not in vary.lower():
            headers["Vary"] = f"{vary}, Origin"

    def response_headers(self, origin: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        headers["Vary"] = "Origin"
        return headers
