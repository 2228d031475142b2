"""Names shared across modules: response headers, the entry format version, reserved key prefixes."""

from typing import Final

PRODUCT: Final = "artstory-proxy"

# Response headers the proxy adds.
X_CACHE: Final = "X-Cache"
CACHE_STATUS: Final = "Cache-Status"
REQUEST_ID: Final = "X-Request-ID"
X_CACHE_KEY: Final = "X-Cache-Key"
X_CACHE_KEY_FIELDS: Final = "X-Cache-Key-Fields"
X_CACHE_INPUTS: Final = "X-Cache-Inputs"

# Request headers the proxy reads (and does not forward).
X_CACHE_TTL: Final = "X-Cache-TTL"
X_CACHE_DEBUG: Final = "X-Cache-Debug"

# X-Cache values.
HIT: Final = "HIT"
MISS: Final = "MISS"
BYPASS: Final = "BYPASS"
REFRESH: Final = "REFRESH"
STALE: Final = "STALE"
COALESCED: Final = "COALESCED"

# Every key the proxy writes starts with PROXY_KEY_PREFIX followed by one of the route
# namespaces; these suffixes live under a namespace-free reserved prefix of their own.
INTERNAL_NAMESPACE: Final = "_artstory_proxy"

# Stored entry format; bump when the layout in entry.py changes.
ENTRY_MAGIC: Final = b"APX"
ENTRY_VERSION: Final = 1
