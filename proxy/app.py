"""The application factory: collaborators are injected, or opened from settings at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from proxy import admin, analytics
from proxy.access import AccessPolicy, access_policy_from
from proxy.cors import CorsPolicy
from proxy.errors import ClientRequestError
from proxy.metrics import ProxyCollector
from proxy.middleware import cors_headers_hook, edge_wrapper
from proxy.prices import PriceTable, load_price_table
from proxy.proxy import CacheProxy
from proxy.ratelimit import Limiter
from proxy.refusals import Refusals
from proxy.routes import RouteTable, load_route_table
from proxy.settings import Settings
from proxy.state import (
    COLLECTOR,
    LIMITER,
    PROXY,
    REFUSALS,
    ROUTES,
    SETTINGS,
    STATE,
    STATS,
    STATS_KEEPER,
    STORE,
    AppState,
)
from proxy.stats import Stats
from proxy.stats_keeper import StatsKeeper
from proxy.store.base import Store
from proxy.store.factory import (
    coordinator_for,
    open_store,
    redis_client_of,
    resolve_redis_url,
    tier_invalidation_for,
)
from proxy.store.tiered import TieredStore
from proxy.upstream import UpstreamClient, create_session


def create_app(
    settings: Settings,
    *,
    routes: RouteTable | None = None,
    prices: PriceTable | None = None,
    store: Store | None = None,
    session: aiohttp.ClientSession | None = None,
    access: AccessPolicy | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the proxy application.

    `store` and `session` are opened from `settings` at start-up when not given (and closed at
    clean-up); tests pass their own. The route table and price table are read now, so a bad
    file fails fast.
    """
    table = routes or load_route_table(
        settings.routes_file, upstreams=settings.upstreams, default_ttl=settings.default_ttl
    )
    price_table = prices or load_price_table(settings.prices_file)
    access_policy = access or access_policy_from(settings)
    stats = Stats(price_table)
    refusals = Refusals()
    cors = CorsPolicy.from_origins(settings.cors_origins)
    edged = edge_wrapper(
        access_log=settings.access_log,
        stats=stats,
        cors=cors,
        methods_for=lambda path: table.methods_for(path) or _admin_methods(path),
        refusals=refusals,
    )
    app = web.Application()
    if cors.enabled:  # without allowed origins every cross-origin request is refused: no headers to add
        app.on_response_prepare.append(cors_headers_hook(cors))
    app[REFUSALS] = refusals
    app[SETTINGS] = settings
    app[ROUTES] = table
    app[STATE] = AppState()
    app[STATS] = stats

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        active_store = store if store is not None else open_store(await resolve_redis_url(settings), settings)
        own_session = session is None
        active_session = session if session is not None else create_session(settings)
        coordinator = coordinator_for(active_store, settings)
        invalidation = tier_invalidation_for(active_store, settings)
        limiter = Limiter(
            redis_client_of(active_store),
            key_prefix=settings.key_prefix,
            upstream=settings.rate_limit_upstream,
            hits=settings.rate_limit_hits,
            daily_budget=settings.daily_budget_usd,
            clock=clock,
        )
        app[LIMITER] = limiter
        proxy = CacheProxy(
            settings=settings,
            routes=table,
            store=active_store,
            client=UpstreamClient(active_session),
            coordinator=coordinator,
            access=access_policy,
            limiter=limiter,
            prices=price_table,
            refusals=refusals,
            clock=clock,
        )
        keeper = StatsKeeper(
            stats,
            active_store,
            namespaces=table.namespaces,
            key_prefix=settings.key_prefix,
            retention=settings.stats_retention,
        )
        app[STORE] = active_store
        app[PROXY] = proxy
        app[STATS_KEEPER] = keeper
        app[COLLECTOR] = ProxyCollector(
            stats,
            routes=table.namespaces,
            key_prefix=settings.key_prefix,
            store_errors=lambda: getattr(active_store, "errors", 0),
            store_available=lambda: getattr(active_store, "available", True),
            tier1=active_store.tier1_figures if isinstance(active_store, TieredStore) else None,
            usage=keeper.cached_usage,
            refusals=lambda: refusals.counts,
        )
        flusher = asyncio.get_running_loop().create_task(keeper.run_flusher(settings.stats_flush_interval))
        yield
        stop_by = app[STATE].stop_by
        await proxy.drain(settings.shutdown_grace if stop_by is None else max(0.0, stop_by - time.monotonic()))
        await coordinator.close()
        if invalidation is not None:
            await invalidation.close()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await keeper.flush()
        if own_session:
            await active_session.close()
        if own_store:
            await active_store.close()

    app.cleanup_ctx.append(resources)
    app.router.add_route("*", "/healthz", edged(admin.only({"GET": admin.healthz})))
    app.router.add_route("*", "/readyz", edged(admin.only({"GET": admin.readyz})))
    app.router.add_route("*", "/metrics", edged(admin.only({"GET": admin.metrics})))
    app.router.add_route("*", "/redis/health", edged(admin.only({"GET": admin.redis_health})))
    app.router.add_route("*", "/redis/stats", edged(admin.only({"GET": admin.redis_stats})))
    # Cache analytics (proxy/analytics.py): the per-minute history and the dashboard page, both
    # behind the admin token like /redis/stats.
    app.router.add_route("*", "/redis/stats/history", edged(admin.only({"GET": analytics.stats_history})))
    app.router.add_route("*", "/redis/dashboard", edged(admin.only({"GET": analytics.dashboard})))
    app.router.add_route("*", "/redis/clear", edged(admin.only({"DELETE": admin.clear_all})))
    app.router.add_route("*", "/redis/clear/{pattern:.+}", edged(admin.only({"DELETE": admin.clear_pattern})))
    app.router.add_route("*", "/{tail:.*}", edged(proxy_handler))
    return app


def _admin_methods(path: str) -> frozenset[str] | None:
    """Methods of the proxy's own endpoints, for preflights."""
    if path in ("/healthz", "/readyz", "/metrics") or path.startswith("/redis/"):
        return frozenset({"GET", "DELETE"} if path.startswith("/redis/clear") else {"GET"})
    return None


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    segments = request.path.split("/")
    if "." in segments or ".." in segments:
        raise ClientRequestError("the path must not contain . or .. segments")
    return await request.app[PROXY].handle(request)
