"""The processes a run starts: the fake upstream, the proxy, the baselines and nginx.

Servers under test run pinned to the server CPUs; the fake upstream runs with the load generator.
Every one listens on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

from benchmarks.config import REPO, BenchConfig
from benchmarks.nginx import nginx_argv, nginx_binary, write_config
from benchmarks.processes import Child, ProcessRegistry, wait_http


@dataclass(frozen=True)
class ServerSpec:
    """A kind of server under test; `role` is `proxy`, `baseline` or `peer`."""

    name: str
    label: str
    role: str


# Proxy variants. "Redis hits" turn the in-process first tier off (when the proxy has one), so
# every hit is a Redis GET; PROXY_DEFAULT keeps every default (first tier on). One worker unless
# stated (`--workers 1` when the proxy has the option).
PROXY = ServerSpec("proxy", "proxy, Redis hits (JSON access log)", "proxy")
PROXY_NOLOG = ServerSpec("proxy-nolog", "proxy, Redis hits, access log off", "proxy")
PROXY_DEFAULT = ServerSpec("proxy-tier1", "proxy, defaults (first-tier hits)", "proxy")
PROXY_WORKERS = ServerSpec("proxy-workers", "proxy, N workers, Redis hits", "proxy")
CEILING = ServerSpec("ceiling", "aiohttp ceiling", "baseline")
PIPELINED = ServerSpec("redis-pipelined", "Redis limit (pipelined)", "baseline")
NAIVE = ServerSpec("redis-naive", "naive redis.asyncio", "baseline")
NGINX = ServerSpec("nginx", "nginx proxy_cache", "peer")
ALL_SERVERS = (PROXY, PROXY_NOLOG, PROXY_DEFAULT, PROXY_WORKERS, CEILING, PIPELINED, NAIVE, NGINX)


@dataclass(frozen=True)
class ProxyFeatures:
    """What the proxy under test offers, read from it (older commits lack both)."""

    workers: bool  # `serve --workers N`
    tier1: bool  # an in-process first tier, turned off by PROXY_TIER1_MAX_BYTES=0

    def describe(self) -> str:
        return (
            f"--workers: {'yes' if self.workers else 'no (N-worker rows n/a)'}; "
            f"in-process first tier: {'yes' if self.tier1 else 'no (first-tier rows n/a)'}"
        )


_TIER1_PROBE = (
    "import dataclasses, proxy.settings as s; "
    "print('tier1_max_bytes' in {f.name for f in dataclasses.fields(s.Settings)})"
)


@dataclass
class Server:
    """A started server: its spec, port and process."""

    spec: ServerSpec
    port: int
    child: Child

    @property
    def pid(self) -> int:
        return self.child.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {name: os.environ[name] for name in keep if name in os.environ}


def start_fake(cfg: BenchConfig, registry: ProcessRegistry) -> Server:
    """The fake OpenAI / artwork / image upstream, on the load CPUs."""
    port = free_port()
    argv = [cfg.python, "-m", "tests.fake_upstream", "--port", str(port)]
    argv += ["--latency", str(cfg.upstream_latency), "--image-bytes", str(cfg.image_bytes)]
    child = registry.start("fake-upstream", argv, cpus=cfg.load_cpus, env=_base_env(), cwd=REPO)
    wait_http(child, port, "/__stats")
    return Server(ServerSpec("fake", "fake upstream", "upstream"), port, child)


def proxy_env(cfg: BenchConfig, upstream_port: int, *, access_log: bool) -> dict[str, str]:
    """The proxy's environment: its own Redis database and key prefix, every upstream the fake."""
    upstream = f"http://127.0.0.1:{upstream_port}"
    return {
        **_base_env(),
        "REDIS_URL": cfg.redis_url,
        "PROXY_KEY_PREFIX": cfg.key_prefix,
        "PROXY_HOST": "127.0.0.1",
        "OPENAI_BASE_URL": upstream,
        "ARTWORK_API_URL": upstream,
        "IMAGE_API_URL": upstream,
        "PROXY_LOG_FORMAT": "json",
        "PROXY_ACCESS_LOG": "true" if access_log else "false",
        "PROXY_SHUTDOWN_GRACE": "2",
        "PROXY_DRAIN_DELAY": "0",  # stop at once between scenarios (ignored by versions without it)
    }


def proxy_features(cfg: BenchConfig) -> ProxyFeatures:
    """`--workers` when `python -m proxy serve --help` lists it; a first tier when the settings have one."""

    def output(argv: list[str]) -> str:
        completed = subprocess.run(
            argv, cwd=cfg.proxy_src, env=_base_env(), capture_output=True, text=True, timeout=60, check=False
        )
        return completed.stdout

    workers = "--workers" in output([cfg.python, "-m", "proxy", "serve", "--help"])
    tier1 = output([cfg.python, "-c", _TIER1_PROBE]).strip() == "True"
    return ProxyFeatures(workers=workers, tier1=tier1)


def default_proxy(features: ProxyFeatures) -> ServerSpec:
    """The proxy with every default setting (the first tier on when there is one)."""
    return PROXY_DEFAULT if features.tier1 else PROXY


def start_server(
    spec: ServerSpec,
    cfg: BenchConfig,
    registry: ProcessRegistry,
    *,
    upstream_port: int,
    features: ProxyFeatures,
) -> Server:
    """Start one server under test on the server CPUs and wait until it answers."""
    port = free_port()
    if spec.role == "proxy":
        argv = [cfg.python, "-m", "proxy", "serve", "--port", str(port)]
        if features.workers:
            argv += ["--workers", str(cfg.workers if spec is PROXY_WORKERS else 1)]
        env = proxy_env(cfg, upstream_port, access_log=spec is not PROXY_NOLOG)
        if features.tier1 and spec is not PROXY_DEFAULT:
            env["PROXY_TIER1_MAX_BYTES"] = "0"  # every hit from Redis
        cpus = (cfg.workers_cpus or cfg.server_cpus) if spec is PROXY_WORKERS else cfg.server_cpus
        child = registry.start(spec.name, argv, cpus=cpus, env=env, cwd=cfg.proxy_src)
    elif spec.role == "baseline":
        argv = [cfg.python, "-m", "benchmarks.baselines", "--kind", spec.name, "--port", str(port)]
        argv += ["--redis-url", cfg.redis_url, "--key-prefix", cfg.key_prefix]
        argv += ["--body-bytes", str(cfg.chat_answer_bytes), "--image-bytes", str(cfg.image_bytes)]
        child = registry.start(spec.name, argv, cpus=cfg.server_cpus, env=_base_env(), cwd=REPO)
    elif spec is NGINX:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        config = write_config(registry.log_dir.parent / f"nginx-{port}", port=port, upstream_port=upstream_port)
        child = registry.start(spec.name, nginx_argv(binary, config), cpus=cfg.server_cpus, env=_base_env())
    else:
        raise ValueError(f"cannot start {spec.name}")
    wait_http(child, port, "/healthz")
    return Server(spec, port, child)


def runs_here(spec: ServerSpec, cfg: BenchConfig, features: ProxyFeatures) -> str | None:
    """Why `spec` cannot run on this machine, or None when it can."""
    if spec is NGINX and not cfg.nginx:
        return "nginx disabled (--no-nginx)"
    if spec is NGINX and nginx_binary() is None:
        return "nginx not installed"
    if spec is PROXY_WORKERS and not features.workers:
        return "n/a (no --workers option yet)"
    if spec is PROXY_DEFAULT and not features.tier1:
        return "n/a (no first tier yet)"
    return None
