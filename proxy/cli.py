"""The command line: `artstory-proxy serve` (the default), with every option documented in --help."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import aiohttp
import structlog

from proxy import __version__, operations, warming
from proxy.access import AccessPolicy, access_policy_from, hash_access_key
from proxy.app import create_app
from proxy.envfile import environment_with_dotenv
from proxy.errors import ClientRequestError, ConfigError, StoreError
from proxy.logs import configure_logging, flush_logs
from proxy.prices import PriceTable, load_price_table
from proxy.routes import RouteTable, load_route_table
from proxy.server import run_server
from proxy.settings import MEMORY_URL, Settings
from proxy.stats import Stats
from proxy.stats_keeper import StatsKeeper
from proxy.store.base import Store
from proxy.store.factory import open_store, resolve_redis_url
from proxy.workers import available_cpus, supervise

PROG = "artstory-proxy"
DESCRIPTION = """\
A caching proxy for AI and image APIs. Requests are matched against the route table, hashed into
a namespaced Redis key, answered from the cache on a hit and forwarded upstream on a miss.

Every option can also be set by the environment variable named in its help (a .env file in the
working directory is read too; real environment variables win; options win over both).
"""

# option -> environment variable it overrides
_SERVE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--host", "PROXY_HOST", "address to listen on (env PROXY_HOST, default 0.0.0.0)"),
    ("--port", "PROXY_PORT", "port to listen on (env PROXY_PORT, default 8000)"),
    (
        "--workers",
        "PROXY_WORKERS",
        "worker processes sharing the port with SO_REUSEPORT (env PROXY_WORKERS; default auto: one per CPU "
        "available with Redis, one with the embedded store)",
    ),
    ("--routes", "PROXY_ROUTES", "route table file (env PROXY_ROUTES, default the shipped config/routes.toml)"),
    (
        "--redis-url",
        "REDIS_URL",
        "Redis URL, or memory:// for the embedded in-process store (env REDIS_URL; else REDIS_HOST, "
        "REDIS_PORT, REDIS_DB, REDIS_PASSWORD; with none set, Redis on localhost:6379 if it answers, "
        "else memory)",
    ),
    (
        "--key-prefix",
        "PROXY_KEY_PREFIX",
        "prefix before every key the proxy writes (env PROXY_KEY_PREFIX, default none)",
    ),
    ("--log-level", "PROXY_LOG_LEVEL", "debug, info, warning or error (env PROXY_LOG_LEVEL, default info)"),
    (
        "--log-format",
        "PROXY_LOG_FORMAT",
        "auto, json or console (env PROXY_LOG_FORMAT, default auto: json unless a terminal)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    serve_options = argparse.ArgumentParser(add_help=False)
    for flag, _variable, help_text in _SERVE_OPTIONS:
        serve_options.add_argument(flag, help=help_text)
    serve_options.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not write one log line per request (env PROXY_ACCESS_LOG=false)",
    )
    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument(
        "--redis-url", help="the store to work on (env REDIS_URL and the other REDIS_* variables)"
    )
    store_options.add_argument("--routes", help="route table file, for the namespaces (env PROXY_ROUTES)")
    store_options.add_argument("--key-prefix", help="key prefix (env PROXY_KEY_PREFIX)")
    store_options.add_argument(
        "--proxy-url",
        help="ask a running proxy over HTTP instead of opening the store (automatic when the store is the "
        "embedded one, which lives inside the proxy process; default http://127.0.0.1:$PROXY_PORT); "
        "sends PROXY_ADMIN_TOKEN when set",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[serve_options],
        epilog="Run without a command to serve. The README lists every environment variable.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "serve", parents=[serve_options], help="run the proxy (the default)", description="Run the proxy."
    )
    commands.add_parser(
        "health",
        parents=[store_options],
        help="check the store, like GET /redis/health (exit 1 when unhealthy)",
        description="Check the store answers; print its figures as JSON. Exit 0 when healthy, 1 when not.",
    )
    commands.add_parser(
        "stats",
        parents=[store_options],
        help="print the cache statistics of every replica, like GET /redis/stats",
        description="Print the statistics every replica flushed to the store, and the store's figures, as JSON.",
    )
    clear = commands.add_parser(
        "clear",
        parents=[store_options],
        help="delete cached entries, like DELETE /redis/clear[/PATTERN]",
        description="Delete every entry of the proxy's namespaces, or those matching PATTERN "
        "(artwork_info:*, ai_content:chat.completions:*, ...). Keys of other applications are never touched.",
    )
    clear.add_argument("pattern", nargs="?", metavar="PATTERN", help="a glob inside one namespace")
    warm = commands.add_parser(
        "warm",
        help="fill the cache from a file of requests, through a running proxy",
        description="Send every request of a JSON-lines file (method, path, body, headers) through the running "
        "proxy, so its answers are cached the normal way. Prints a summary (stored, already cached, failed); "
        "exits 1 when any request failed.",
    )
    warm.add_argument("file", type=Path, metavar="FILE", help='JSON lines: {"method", "path", "body", "headers"}')
    warm.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    warm.add_argument("--proxy-url", help="the proxy to warm (default http://127.0.0.1:$PROXY_PORT)")
    warm.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every request, e.g. an access key: --header 'Authorization: Bearer ask-...'",
    )
    hash_key = commands.add_parser(
        "hash-key",
        help="print the PROXY_ACCESS_KEYS entry for a client access key (or make a new key)",
        description="Print the sha256:<hex> form of a client access key, for PROXY_ACCESS_KEYS or its file. "
        "Without KEY, make a new random key and print it with its hash.",
    )
    hash_key.add_argument("key", nargs="?", metavar="KEY", help="the key to hash (default: a new random one)")
    return parser


def environment_for(args: argparse.Namespace) -> dict[str, str]:
    env = environment_with_dotenv()
    for flag, variable, _help in _SERVE_OPTIONS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            env[variable] = value
    if getattr(args, "no_access_log", False):
        env["PROXY_ACCESS_LOG"] = "false"
    return env


def load_configuration(env: dict[str, str]) -> tuple[Settings, RouteTable, PriceTable, AccessPolicy]:
    settings = Settings.from_env(env)
    routes = load_route_table(settings.routes_file, upstreams=settings.upstreams, default_ttl=settings.default_ttl)
    prices = load_price_table(settings.prices_file)
    return settings, routes, prices, access_policy_from(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-key":
        key = args.key or "ask-" + secrets.token_urlsafe(32)
        if not args.key:
            print(f"key:  {key}")
        print(("hash: " if not args.key else "") + hash_access_key(key))
        return 0
    try:
        settings, routes, prices, access = load_configuration(environment_for(args))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.command in (None, "serve"):
        if settings.event_loop != "asyncio":
            try:
                loop_factory(settings.event_loop)
            except ConfigError as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                return 2
        return serve(settings, routes, prices, access)
    if args.command == "warm":
        return run_warm(args, settings)
    return asyncio.run(run_operation(args.command, settings, routes, args))


def serve(settings: Settings, routes: RouteTable, prices: PriceTable, access: AccessPolicy) -> int:
    configure_logging(
        settings.log_level,
        settings.log_format,
        secrets=[upstream.api_key for upstream in settings.upstreams.values()]
        + [settings.admin_token, settings.jwt_hs256_secret],
    )
    log = structlog.get_logger("proxy")
    if not settings.admin_token:
        log.warning("PROXY_ADMIN_TOKEN is unset: the clear endpoints answer only to loopback clients")
    held = sorted(name for name, upstream in settings.upstreams.items() if upstream.api_key)
    if held and access.open_access:
        log.warning(
            "PROXY_OPEN_ACCESS is on: anyone who reaches the proxy spends the upstream keys it holds",
            upstreams=held,
        )
    elif held and not access.configured:
        log.warning(
            "the proxy holds upstream keys but no client credentials are configured: requests to those "
            "upstreams are refused (401) until PROXY_ACCESS_KEYS, PROXY_ACCESS_KEYS_FILE, PROXY_JWT_HS256_SECRET "
            "or PROXY_JWT_RS256_PUBLIC_KEY is set, or PROXY_OPEN_ACCESS=true",
            upstreams=held,
        )
    # Resolved once, before any worker starts, so every worker uses the same store.
    settings = dataclasses.replace(settings, redis_url=asyncio.run(resolve_redis_url(settings)))
    count = settings.workers or (available_cpus() if settings.redis_url != MEMORY_URL else 1)
    if count > 1 and settings.redis_url == MEMORY_URL:
        log.warning("the embedded store lives in one process: running one worker, not several", asked=count)
        count = 1
    log.info(
        "starting",
        version=__version__,
        workers=count,
        routes=list(routes.namespaces),
        routes_file=str(settings.routes_file),
    )
    if count == 1:
        return _serve_one(settings, routes, prices, access, reuse_port=False)
    return supervise(count, lambda _index: _serve_one(settings, routes, prices, access, reuse_port=True))


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for (or `auto` and installed), else asyncio's own loop."""
    if name in ("uvloop", "auto"):
        try:
            uvloop = importlib.import_module("uvloop")  # optional: `pip install uvloop`
        except ImportError:
            if name == "uvloop":
                raise ConfigError("invalid setting PROXY_EVENT_LOOP: uvloop is not installed") from None
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def _serve_one(
    settings: Settings, routes: RouteTable, prices: PriceTable, access: AccessPolicy, *, reuse_port: bool
) -> int:
    app = create_app(settings, routes=routes, prices=prices, access=access)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(run_server(app, settings, reuse_port=reuse_port))
    except OSError as exc:
        structlog.get_logger("proxy").error("cannot listen", error=str(exc))
        return 1
    finally:
        flush_logs()  # a forked worker leaves through os._exit: atexit would not run
    return 0


def run_warm(args: argparse.Namespace, settings: Settings) -> int:
    if args.concurrency < 1:
        print(f"{PROG}: --concurrency must be at least 1", file=sys.stderr)
        return 2
    headers = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            print(f"{PROG}: --header {raw!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    if not args.file.is_file():
        print(f"{PROG}: {args.file} is not a file", file=sys.stderr)
        return 2
    total = sum(
        1
        for line in args.file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    summary = warming.WarmSummary()
    base_url = (args.proxy_url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    asyncio.run(
        warming.warm(
            warming.read_requests(args.file),
            summary,
            base_url=base_url,
            concurrency=args.concurrency,
            extra_headers=headers,
            total=total,
        )
    )
    _print_json(summary.as_dict())
    return 1 if summary.failed else 0


async def run_operation(command: str, settings: Settings, routes: RouteTable, args: argparse.Namespace) -> int:
    """`health`, `stats` and `clear`, on the store itself or through a running proxy."""
    configure_logging("warning", "console", secrets=[settings.admin_token], stream=sys.stderr)
    url = args.proxy_url or None
    redis_url = await resolve_redis_url(settings) if url is None else None
    if url is None and redis_url == MEMORY_URL:
        url = f"http://127.0.0.1:{settings.port}"
    if url is not None:
        return await _over_http(command, url.rstrip("/"), settings, getattr(args, "pattern", None))
    assert redis_url is not None
    store = open_store(redis_url, settings)
    try:
        return await _on_store(command, store, settings, routes, getattr(args, "pattern", None))
    finally:
        await store.close()


async def _on_store(command: str, store: Store, settings: Settings, routes: RouteTable, pattern: str | None) -> int:
    if command == "health":
        healthy, body = await operations.health(store)
        _print_json(body)
        return 0 if healthy else 1
    try:
        if command == "stats":
            keeper = StatsKeeper(
                Stats(PriceTable({})), store, namespaces=routes.namespaces, key_prefix=settings.key_prefix
            )
            snapshot = await keeper.snapshot()
            snapshot.pop("process", None)
            _print_json(snapshot)
            return 0 if snapshot.get("cluster") is not None else 1
        _print_json(
            await operations.clear(store, pattern, namespaces=routes.namespaces, key_prefix=settings.key_prefix)
        )
        return 0
    except ClientRequestError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        _print_json({"status": "failed", "error": f"Redis connection failed: {exc}"})
        return 1


async def _over_http(command: str, base_url: str, settings: Settings, pattern: str | None) -> int:
    method, path = {
        "health": ("GET", "/redis/health"),
        "stats": ("GET", "/redis/stats"),
        "clear": ("DELETE", "/redis/clear" + (f"/{quote(pattern, safe=':*?[]^-')}" if pattern else "")),
    }[command]
    headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.request(method, base_url + path, headers=headers) as response,
        ):
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"{PROG}: cannot reach the proxy at {base_url}: {exc}", file=sys.stderr)
        return 1
    _print_json(body)
    return 0 if response.status < 400 else 1


def _print_json(body: object) -> None:
    try:
        print(json.dumps(body, indent=2, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # `artstory-proxy stats | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces stdout for the rest of the process
