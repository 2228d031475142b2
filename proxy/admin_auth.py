"""Who may call the admin surface: a bearer token, or loopback clients when none is configured."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from proxy.errors import ClientRequestError
from proxy.settings import Settings

SETTINGS_KEY = web.AppKey("settings", Settings)


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def require_admin(request: web.Request, *, loopback_without_token: bool, query_token: bool = False) -> None:
    """With PROXY_ADMIN_TOKEN set, demand `Authorization: Bearer <token>` (401); without it,
    either allow everyone or, for destructive calls, only loopback clients (403).

    `query_token` also accepts `?token=<token>` when no Authorization header came: for pages a
    browser opens by address (the dashboard), which cannot send a header."""
    token = request.app[SETTINGS_KEY].admin_token
    if token:
        supplied = request.headers.get("Authorization", "")
        if query_token and not supplied and "token" in request.query:
            supplied = f"Bearer {request.query['token']}"
        scheme, _, credential = supplied.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            raise ClientRequestError(
                "admin endpoint: send Authorization: Bearer <PROXY_ADMIN_TOKEN>",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="artstory-proxy admin"'},
            )
        return
    if loopback_without_token and not is_loopback(request.remote):
        raise ClientRequestError(
            "admin endpoint: only loopback clients may call it while PROXY_ADMIN_TOKEN is unset", status=403
        )
