"""The command line: `artstory-proxy serve` (the default), with every option documented in --help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from proxy import __version__
from proxy.app import create_app
from proxy.envfile import environment_with_dotenv
from proxy.errors import ConfigError
from proxy.logs import configure_logging
from proxy.routes import RouteTable, load_route_table
from proxy.settings import Settings

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


def load_configuration(env: dict[str, str]) -> tuple[Settings, RouteTable]:
    settings = Settings.from_env(env)
    routes = load_route_table(settings.routes_file, upstreams=settings.upstreams, default_ttl=settings.default_ttl)
    return settings, routes


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, routes = load_configuration(environment_for(args))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return serve(settings, routes)


def serve(settings: Settings, routes: RouteTable) -> int:
    configure_logging(
        settings.log_level,
        settings.log_format,
        secrets=[upstream.api_key for upstream in settings.upstreams.values()] + [settings.admin_token],
    )
    import structlog

    log = structlog.get_logger("proxy")
    if not settings.admin_token:
        log.warning("PROXY_ADMIN_TOKEN is unset: the clear endpoints answer only to loopback clients")
    app = create_app(settings, routes=routes)
    log.info(
        "starting",
        version=__version__,
        listen=f"http://{settings.host}:{settings.port}",
        routes=list(routes.namespaces),
        routes_file=str(settings.routes_file),
    )
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            print=None,
            shutdown_timeout=settings.shutdown_grace,
        )
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        return 1
    return 0
