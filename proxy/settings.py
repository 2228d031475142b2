"""Settings: one frozen dataclass built from an environment mapping by a pure function.

Every variable is documented in the README's configuration reference. An invalid value raises
`SettingsError` naming the variable; the CLI turns it into one line and a non-zero exit.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from proxy.errors import SettingsError
from proxy.ratelimit import Limit
from proxy.store.redis_clients import hosts_of

PACKAGE_DIR = Path(__file__).resolve().parent
# In a checkout `config/` sits beside the package; a wheel installs the file under share/.
_CONFIG_CANDIDATES = (PACKAGE_DIR.parent / "config", Path(sys.prefix) / "share" / "artstory-proxy")

REDIS_VARIABLES = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")
MEMORY_URL = "memory://"
_REDIS_SCHEMES = (
    "redis", "rediss", "unix", "memory", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel",
)  # fmt: skip
_UPSTREAM_ENV = re.compile(r"^PROXY_UPSTREAM_([A-Z0-9_]+)_URL$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
}  # fmt: skip
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_config_file(name: str) -> Path:
    """A shipped configuration file: `config/<name>` in a checkout, or where a wheel put it."""
    for directory in _CONFIG_CANDIDATES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return _CONFIG_CANDIDATES[0] / name


def default_routes_file() -> Path:
    return default_config_file("routes.toml")


@dataclass(frozen=True)
class Upstream:
    """A base URL the route table may refer to by name, with the key the proxy injects."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything the proxy reads from its environment."""

    host: str = "0.0.0.0"
    port: int = 8000
    event_loop: str = "asyncio"  # or uvloop, or auto: uvloop when installed (README: why not the default)
    fast_lane: bool = True  # plain hits answered beneath aiohttp (proxy/fastlane.py)
    workers: int = 0  # 0: automatic (one per CPU with Redis, one with the embedded store)
    # None: no Redis variable was set, so start-up probes localhost:6379 and falls back to memory.
    redis_url: str | None = field(default=None, repr=False)
    redis_timeout: float = 0.5
    redis_max_connections: int = 64
    memory_max_bytes: int = 64 * 1024**2
    tier1_max_bytes: int = 2 * 1024**2  # 0 turns the in-process first tier off
    tier1_max_ttl: float = 30.0
    routes_file: Path = field(default_factory=default_routes_file)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    key_prefix: str = ""
    default_ttl: int = 3600
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 120.0
    upstream_max_connections: int = 256
    max_request_bytes: int = 10 * 1024**2
    admin_token: str | None = field(default=None, repr=False)
    shutdown_grace: float = 25.0
    drain_delay: float = 3.0
    prices_file: Path = field(default_factory=lambda: default_config_file("prices.toml"))
    stats_flush_interval: float = 1.0
    stats_retention: float = 86400.0
    refresh_ahead: float = 0.0  # 0 off; else the share of a hot entry's life left when it is refreshed
    refresh_ahead_min_hits: int = 3
    coalesce_wait: float = 30.0
    coalesce_lock_ttl: float = 120.0
    # Browser frontends (README "Serving browser frontends").
    cors_origins: tuple[str, ...] = ()
    access_keys: str = field(default="", repr=False)
    access_keys_file: Path | None = None
    jwt_hs256_secret: str | None = field(default=None, repr=False)
    jwt_rs256_public_key: str | None = None
    jwt_audience: str = "artstory-proxy"
    open_access: bool = False
    rate_limit_upstream: Limit | None = None
    rate_limit_hits: Limit | None = None
    rate_limit_serve_hits: bool = True
    daily_budget_usd: float | None = None
    log_level: str = "info"
    log_format: str = "auto"
    access_log: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of environment variables (empty values count as unset)."""
        values = {name: value for name, value in env.items() if value.strip() != ""}
        reader = _Reader(values)
        return cls(
            host=values.get("PROXY_HOST", "0.0.0.0"),
            port=reader.integer("PROXY_PORT", 8000, minimum=0, maximum=65535),
            event_loop=reader.choice("PROXY_EVENT_LOOP", "asyncio", ("auto", "uvloop", "asyncio")),
            fast_lane=reader.boolean("PROXY_FAST_LANE", True),
            workers=0
            if values.get("PROXY_WORKERS", "auto").strip().lower() == "auto"
            else reader.integer("PROXY_WORKERS", 0, minimum=1, maximum=256),
            redis_url=_redis_url(values, reader),
            redis_timeout=reader.seconds("PROXY_REDIS_TIMEOUT", 0.5),
            redis_max_connections=reader.integer("PROXY_REDIS_MAX_CONNECTIONS", 64, minimum=1),
            memory_max_bytes=reader.size("PROXY_MEMORY_MAX_BYTES", 64 * 1024**2),
            tier1_max_bytes=0
            if values.get("PROXY_TIER1_MAX_BYTES", "").strip() == "0"
            else reader.size("PROXY_TIER1_MAX_BYTES", 2 * 1024**2),
            tier1_max_ttl=reader.seconds("PROXY_TIER1_MAX_TTL", 30.0),
            routes_file=Path(values["PROXY_ROUTES"]) if "PROXY_ROUTES" in values else default_routes_file(),
            upstreams=_upstreams(values),
            key_prefix=_key_prefix(values.get("PROXY_KEY_PREFIX", "")),
            default_ttl=reader.integer("PROXY_DEFAULT_TTL", 3600, minimum=1),
            upstream_connect_timeout=reader.seconds("PROXY_UPSTREAM_CONNECT_TIMEOUT", 5.0),
            upstream_read_timeout=reader.seconds("PROXY_UPSTREAM_READ_TIMEOUT", 120.0),
            upstream_max_connections=reader.integer("PROXY_UPSTREAM_MAX_CONNECTIONS", 256, minimum=1),
            max_request_bytes=reader.size("PROXY_MAX_REQUEST_BYTES", 10 * 1024**2),
            admin_token=values.get("PROXY_ADMIN_TOKEN"),
            shutdown_grace=reader.seconds("PROXY_SHUTDOWN_GRACE", 25.0),
            drain_delay=reader.seconds("PROXY_DRAIN_DELAY", 3.0, allow_zero=True),
            prices_file=Path(values["PROXY_PRICES"])
            if "PROXY_PRICES" in values
            else default_config_file("prices.toml"),
            stats_flush_interval=reader.seconds("PROXY_STATS_FLUSH_INTERVAL", 1.0),
            stats_retention=reader.duration("PROXY_STATS_RETENTION", 86400.0, minimum=60.0),
            refresh_ahead=reader.fraction("PROXY_REFRESH_AHEAD", 0.0),
            refresh_ahead_min_hits=reader.integer("PROXY_REFRESH_AHEAD_MIN_HITS", 3, minimum=1),
            coalesce_wait=reader.seconds("PROXY_COALESCE_WAIT", 30.0),
            coalesce_lock_ttl=reader.seconds("PROXY_COALESCE_LOCK_TTL", 120.0),
            cors_origins=_origins(values.get("PROXY_CORS_ORIGINS", "")),
            access_keys=values.get("PROXY_ACCESS_KEYS", ""),
            access_keys_file=Path(values["PROXY_ACCESS_KEYS_FILE"]) if "PROXY_ACCESS_KEYS_FILE" in values else None,
            jwt_hs256_secret=values.get("PROXY_JWT_HS256_SECRET"),
            jwt_rs256_public_key=values.get("PROXY_JWT_RS256_PUBLIC_KEY"),
            jwt_audience=values.get("PROXY_JWT_AUDIENCE", "artstory-proxy"),
            open_access=reader.boolean("PROXY_OPEN_ACCESS", False),
            rate_limit_upstream=reader.limit("PROXY_RATE_LIMIT_UPSTREAM"),
            rate_limit_hits=reader.limit("PROXY_RATE_LIMIT_HITS"),
            rate_limit_serve_hits=reader.boolean("PROXY_RATE_LIMIT_SERVE_HITS", True),
            daily_budget_usd=reader.dollars("PROXY_DAILY_BUDGET_USD"),
            log_level=reader.choice("PROXY_LOG_LEVEL", "info", LOG_LEVELS),
            log_format=reader.choice("PROXY_LOG_FORMAT", "auto", LOG_FORMATS),
            access_log=reader.boolean("PROXY_ACCESS_LOG", True),
        )


def _float(name: str, raw: str, what: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not {what}") from None


class _Reader:
    """Typed reads of optional variables, raising `SettingsError` with the variable's name."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = self._values.get(name)
        if raw is None:
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(name, f"{raw!r} is not an integer") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise SettingsError(name, f"{value} is out of range: must be {bounds}")
        return value

    def seconds(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        raw = self._values.get(name)
        if raw is None:
            return default
        value = _float(name, raw, "a number of seconds")
        if not (value > 0 or (allow_zero and value == 0)) or value == float("inf"):
            kind = "zero or a positive" if allow_zero else "a positive"
            raise SettingsError(name, f"{raw!r} must be {kind} number of seconds")
        return value

    def duration(self, name: str, default: float, *, minimum: float) -> float:
        """Seconds, or a duration such as `24h`, `90m`, `7d`; at least `minimum` seconds."""
        raw = self._values.get(name)
        if raw is None:
            return default
        from proxy.routes import parse_duration  # proxy.routes imports this module

        try:
            value = parse_duration(raw.strip())
        except ValueError as exc:
            raise SettingsError(name, f"{raw!r} {exc}") from None
        if value < minimum:
            raise SettingsError(name, f"{raw!r} is too short: at least {minimum:g} seconds")
        return value

    def size(self, name: str, default: int) -> int:
        raw = self._values.get(name)
        if raw is None:
            return default
        try:
            return parse_size(raw)
        except ValueError as exc:
            raise SettingsError(name, str(exc)) from None

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self._values.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value not in allowed:
            raise SettingsError(name, f"{raw!r} is not one of {', '.join(allowed)}")
        return value

    def fraction(self, name: str, default: float) -> float:
        raw = self._values.get(name)
        if raw is None:
            return default
        value = _float(name, raw, "a number")
        if not 0 <= value < 1:
            raise SettingsError(name, f"{raw!r} must be at least 0 and below 1 (a share of the entry's life)")
        return value

    def limit(self, name: str) -> Limit | None:
        raw = self._values.get(name)
        if raw is None:
            return None
        try:
            return Limit.parse(raw)
        except ValueError as exc:
            raise SettingsError(name, str(exc)) from None

    def dollars(self, name: str) -> float | None:
        raw = self._values.get(name)
        if raw is None:
            return None
        value = _float(name, raw.strip().lstrip("$"), "an amount of US dollars")
        if not 0 < value < float("inf"):
            raise SettingsError(name, f"{raw!r} must be a positive amount")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._values.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise SettingsError(name, f"{raw!r} is not a boolean (use true or false)")


def parse_size(raw: str) -> int:
    """`1048576`, `64MiB`, `10MB`, `512k` -> bytes."""
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"{raw!r} is not a size (examples: 1048576, 512KiB, 64MiB)")
    number, unit = match.groups()
    value = int(float(number) * _SIZE_UNITS[(unit or "").lower()])
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive size")
    return value


def _redis_url(values: Mapping[str, str], reader: _Reader) -> str | None:
    if "REDIS_URL" in values:
        url = values["REDIS_URL"].strip()
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _REDIS_SCHEMES:
            raise SettingsError(
                "REDIS_URL",
                f"scheme {scheme or '(none)'!r} is not supported: use redis://, rediss://, unix://, "
                "redis+cluster://, redis+sentinel:// or memory://",
            )
        if "+" in scheme:
            _check_hosts(url, sentinel=scheme.endswith("sentinel"))
        return MEMORY_URL if scheme == "memory" else url
    if not any(name in values for name in REDIS_VARIABLES):
        return None
    host = values.get("REDIS_HOST", "localhost").strip()
    if not host or any(ch in host for ch in "/@?# "):
        raise SettingsError("REDIS_HOST", f"{host!r} is not a host name")
    port = reader.integer("REDIS_PORT", 6379, minimum=1, maximum=65535)
    db = reader.integer("REDIS_DB", 0, minimum=0)
    password = values.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    netloc_host = f"[{host}]" if ":" in host else host
    return f"redis://{auth}{netloc_host}:{port}/{db}"


def _check_hosts(url: str, *, sentinel: bool) -> None:
    try:
        hosts_of(url)
    except ValueError as exc:
        raise SettingsError("REDIS_URL", f"{redact_url(url)}: {exc}") from None
    if sentinel and not urlsplit(url).path.strip("/"):
        raise SettingsError("REDIS_URL", "a Sentinel URL names its master: redis+sentinel://host:port/master-name")


def _upstream_url(name: str, raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, f"{raw!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise SettingsError(name, f"{raw!r} must not have a query or fragment")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _upstreams(values: Mapping[str, str]) -> dict[str, Upstream]:
    upstreams = {
        "openai": Upstream(
            "openai",
            _upstream_url("OPENAI_BASE_URL", values.get("OPENAI_BASE_URL", "https://api.openai.com/v1")),
            values.get("OPENAI_API_KEY"),
        ),
        "artwork": Upstream(
            "artwork", _upstream_url("ARTWORK_API_URL", values.get("ARTWORK_API_URL", "http://localhost:8001"))
        ),
        "image": Upstream(
            "image", _upstream_url("IMAGE_API_URL", values.get("IMAGE_API_URL", "http://localhost:8002"))
        ),
    }
    for variable, raw in values.items():
        match = _UPSTREAM_ENV.match(variable)
        if match:
            name = match.group(1).lower()
            key = values.get(f"PROXY_UPSTREAM_{match.group(1)}_KEY")
            upstreams[name] = Upstream(name, _upstream_url(variable, raw), key)
    return upstreams


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(item.strip().rstrip("/") for item in re.split(r"[,\s]+", raw) if item.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
            raise SettingsError("PROXY_CORS_ORIGINS", f"{origin!r} is not an origin such as https://app.example")
    return origins


def _key_prefix(raw: str) -> str:
    if any(ch in raw for ch in "*?[]{}\\ \r\n\t") or not raw.isprintable():
        raise SettingsError(
            "PROXY_KEY_PREFIX", f"{raw!r} must not contain glob characters, hash-tag braces or whitespace"
        )
    return raw


def redact_url(url: str) -> str:
    """A URL fit for logs: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))
