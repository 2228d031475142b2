"""Redis clients for every `REDIS_URL` form: a server, a Cluster, or a master behind Sentinel.

- `redis://[:password@]host:port/db`, `rediss://...` (TLS), `unix:///path/to/redis.sock?db=0`
- `redis+cluster://[:password@]host:port[,host:port...]` (or `rediss+cluster://`): any nodes
  of the cluster; the others are discovered.
- `redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]` (or
  `rediss+sentinel://`): the sentinels, and the name of the master they watch; the password is
  the master's.

Every client gets the same short timeouts and at most one immediate retry on a broken connection.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

RedisClient = redis.Redis | RedisCluster
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLIENT_NAME = "artstory-proxy"


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def redis_client(url: str, *, timeout: float, max_connections: int) -> RedisClient:
    scheme = urlsplit(url).scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        return _cluster_client(url, timeout=timeout, max_connections=max_connections)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_client(url, timeout=timeout, max_connections=max_connections)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry(),
        client_name=CLIENT_NAME,
    )
    return redis.Redis(connection_pool=pool)


def hosts_of(url: str) -> list[tuple[str, int]]:
    """The `host:port` list of a cluster or sentinel URL."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _auth(url: str) -> tuple[str | None, str | None]:
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return None, None
    user, _, password = netloc.rsplit("@", 1)[0].partition(":")
    return (unquote(user) or None), (unquote(password) or None)


def _cluster_client(url: str, *, timeout: float, max_connections: int) -> RedisCluster:
    username, password = _auth(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in hosts_of(url)],
        username=username,
        password=password,
        ssl=urlsplit(url).scheme.lower().startswith("rediss"),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=max_connections,
        # One retry (after re-discovering the slots), not redis-py's default of several with
        # backoff: the fail-open store answers from the upstream meanwhile.
        retry=Retry(NoBackoff(), 1),
        client_name=CLIENT_NAME,
    )


def _sentinel_client(url: str, *, timeout: float, max_connections: int) -> redis.Redis:
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    if not segments:
        raise ValueError("a Sentinel URL names the master: redis+sentinel://host:port/master-name")
    username, password = _auth(url)
    connection: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": _retry(),
        "ssl": parts.scheme.lower().startswith("rediss"),
    }
    sentinel = Sentinel(hosts_of(url), sentinel_kwargs={"socket_timeout": timeout}, **connection)  # type: ignore[no-untyped-call]
    master: redis.Redis = sentinel.master_for(
        segments[0],
        db=int(segments[1]) if len(segments) > 1 else 0,
        username=username,
        password=password,
        max_connections=max_connections,
        client_name=CLIENT_NAME,
    )
    return master
