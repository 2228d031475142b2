"""Typed application keys: the collaborators `create_app` puts on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.admin_auth import SETTINGS_KEY
from proxy.metrics import ProxyCollector
from proxy.proxy import CacheProxy
from proxy.ratelimit import Limiter
from proxy.refusals import Refusals
from proxy.routes import RouteTable
from proxy.stats import Stats
from proxy.stats_keeper import StatsKeeper
from proxy.store.base import Store


@dataclass
class AppState:
    """Process-wide state the probes report."""

    draining: bool = False
    # Monotonic time by which the whole shutdown (requests and cache fills) must be over.
    stop_by: float | None = None


SETTINGS = SETTINGS_KEY
ROUTES = web.AppKey("routes", RouteTable)
STORE = web.AppKey("store", Store)
PROXY = web.AppKey("proxy", CacheProxy)
STATE = web.AppKey("state", AppState)
STATS = web.AppKey("stats", Stats)
STATS_KEEPER = web.AppKey("stats_keeper", StatsKeeper)
COLLECTOR = web.AppKey("collector", ProxyCollector)
LIMITER = web.AppKey("limiter", Limiter)
REFUSALS = web.AppKey("refusals", Refusals)
