"""The deployment files against the proxy itself: Dockerfile, compose.yaml, config/k8s/, config/redis.conf.

A probe on a path the proxy does not serve, a port it does not listen on or a misspelt variable
would each be accepted by `kubectl apply` and `docker compose up` and only fail in production
(pods never ready, a setting silently ignored). These tests read the files and check every such
reference against the real proxy: its settings parser, its route table parser, its application.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.cli import build_parser
from proxy.errors import SettingsError
from proxy.routes import load_route_table, parse_route_table
from proxy.settings import Settings
from tests.conftest import REPO

K8S = REPO / "config" / "k8s"
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
REDIS_CONF = REPO / "config" / "redis.conf"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# Variables whose values are credentials: never written into a manifest, always from a secret.
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_PASSWORD")
# Variables that belong to Python or the image, not to the proxy.
NOT_PROXY_VARIABLES = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "LANG"}

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


# --- reading the files --------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]


def kustomization() -> dict[str, Any]:
    (document,) = yaml_documents(K8S / "kustomization.yaml")
    return document


def manifests() -> list[dict[str, Any]]:
    return [document for name in kustomization()["resources"] for document in yaml_documents(K8S / name)]


def one(kind: str) -> dict[str, Any]:
    found = [document for document in manifests() if document["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in config/k8s, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def proxy_container() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == "proxy"]
    return container


def secret_sentinel(name: str) -> str:
    return f"from-secret-{name.lower().replace('_', '-')}"


def deployment_env() -> dict[str, str]:
    """The container's environment, with each secret reference standing in for its value."""
    env: dict[str, str] = {}
    for entry in proxy_container()["env"]:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            assert "secretKeyRef" in entry["valueFrom"], f"{entry['name']}: only values and secret references"
            env[entry["name"]] = secret_sentinel(entry["name"])
    return env


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def compose_env(service: str = "proxy") -> dict[str, str]:
    environment = compose()["services"][service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with nothing set in the shell."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in final_stage():
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def dockerfile_value(instruction: str) -> str:
    (value,) = [arguments for name, arguments in final_stage() if name == instruction]
    return value


def proxy_reads(variable: str) -> bool:
    """True when the proxy's settings depend on `variable`: an odd value for it either changes the
    settings or is refused with an error naming it. A variable the proxy never reads does neither."""
    baseline = Settings.from_env({})
    for probe in ("probe-value", "-1"):
        try:
            if Settings.from_env({variable: probe}) != baseline:
                return True
        except SettingsError as exc:
            if exc.variable == variable:
                return True
            raise
    return False


def documented_variables() -> set[str]:
    """The names in the README's configuration reference table."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_<>]*)` \|", section, flags=re.MULTILINE))


def quantity(raw: str | int) -> float:
    """A Kubernetes quantity: `100m`, `1`, `128Mi`, `1G`."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(raw))
    assert match is not None, f"not a quantity: {raw!r}"
    assert match.group(2) in units, f"unknown unit in {raw!r}"
    return float(match.group(1)) * units[match.group(2)]


def compose_seconds(raw: str) -> float:
    """A compose duration: `30s`, `1m30s`, `500ms`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", raw)
    assert parts, f"not a duration: {raw!r}"
    assert "".join(n + u for n, u in parts) == raw, f"not a duration: {raw!r}"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def drain_seconds(settings: Settings) -> float:
    """How long the proxy takes to stop after SIGTERM (README, "Shutdown"): the drain delay, with
    readiness 503 while still serving, then the grace for requests in flight."""
    return settings.drain_delay + settings.shutdown_grace


def probes() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        if kind in proxy_container():
            yield kind, proxy_container()[kind]


def container_port(reference: str | int) -> int:
    """A probe's or Service's port, by name or number, resolved against the container's ports."""
    ports = proxy_container()["ports"]
    if isinstance(reference, int):
        assert reference in [p["containerPort"] for p in ports], f"port {reference} is not a container port"
        return reference
    (port,) = [p["containerPort"] for p in ports if p.get("name") == reference]
    return int(port)


@pytest.fixture
def deployed_app(tmp_path: Path) -> web.Application:
    """The application as the Deployment configures it: its environment and the ConfigMap's route
    table (mounted where PROXY_ROUTES says), on the embedded store instead of the cluster's Redis."""
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text(one("ConfigMap")["data"]["routes.toml"], encoding="utf-8")
    env = {**deployment_env(), "PROXY_ROUTES": str(routes_file), "REDIS_URL": "memory://"}
    return create_app(Settings.from_env(env))


# --- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_except_the_example_secret() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_EXAMPLE.name}
    assert listed == on_disk
    assert {document["kind"] for document in manifests()} == {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
    }


async def test_the_probes_are_the_proxys_own_health_endpoints(
    deployed_app: web.Application, aiohttp_client: AiohttpClient
) -> None:
    found = dict(probes())
    assert found["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert found["readinessProbe"]["httpGet"]["path"] == "/readyz"
    client = await aiohttp_client(deployed_app)
    expected_status = {"/healthz": "alive", "/readyz": "ready"}
    for kind, probe in found.items():
        path = probe["httpGet"]["path"]
        assert container_port(probe["httpGet"]["port"]) == Settings.from_env(deployment_env()).port, kind
        response = await client.get(path)
        assert response.status == 200, f"{kind} {path} answered {response.status}"
        assert (await response.json())["status"] == expected_status[path], kind
    # The 200s above are the probe endpoints, not a catch-all: an unknown path is a 404.
    assert (await client.get("/not-a-probe")).status == 404


def test_the_container_port_is_the_one_the_proxy_listens_on() -> None:
    default_port = Settings.from_env({}).port
    (port,) = proxy_container()["ports"]
    assert port["containerPort"] == default_port
    assert Settings.from_env(deployment_env()).port == default_port
    (service_port,) = one("Service")["spec"]["ports"]
    assert container_port(service_port["targetPort"]) == default_port


def test_the_service_and_the_budget_select_the_deployments_pods() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": one("Service")["spec"]["selector"],
        "PodDisruptionBudget": one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector, kind
        assert selector.items() <= pod_labels.items(), f"the {kind}'s selector does not match the pods"


def test_the_disruption_budget_lets_one_pod_at_a_time_be_evicted() -> None:
    replicas = one("Deployment")["spec"]["replicas"]
    budget = one("PodDisruptionBudget")["spec"]
    assert "minAvailable" in budget
    # At least one pod keeps serving, and a node drain is never blocked for good.
    assert 1 <= budget["minAvailable"] < replicas


def test_the_termination_grace_period_outlasts_the_proxys_drain() -> None:
    env = deployment_env()
    assert {"PROXY_DRAIN_DELAY", "PROXY_SHUTDOWN_GRACE"} <= env.keys(), "set the drain explicitly, by the period"
    drain = drain_seconds(Settings.from_env(env))
    period = pod_spec()["terminationGracePeriodSeconds"]
    # Kubernetes sends SIGKILL after the period: it must outlast the drain, by a little.
    assert drain < period <= drain + 15


def test_the_route_table_configmap_parses_and_matches_the_shipped_table() -> None:
    settings = Settings.from_env(deployment_env())
    document = tomllib.loads(one("ConfigMap")["data"]["routes.toml"])
    table = parse_route_table(
        document, source="configmap.yaml", upstreams=settings.upstreams, default_ttl=settings.default_ttl
    )
    shipped = load_route_table(
        REPO / "config" / "routes.toml", upstreams=settings.upstreams, default_ttl=settings.default_ttl
    )
    # Otherwise the cluster silently runs another table than the image and the README describe.
    assert table.routes == shipped.routes, "copy config/routes.toml into configmap.yaml's data.routes.toml"
    assert table.match("GET", "/artworks/Mona%20Lisa") is not None


def test_proxy_routes_points_at_the_mounted_configmap() -> None:
    container = proxy_container()
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    routes_path = Path(deployment_env()["PROXY_ROUTES"])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == routes_path.parent]
    config_map = volumes[mount["name"]]["configMap"]
    assert config_map["name"] == one("ConfigMap")["metadata"]["name"]
    assert routes_path.name in one("ConfigMap")["data"]
    assert not config_map.get("items"), "with items, the key might be mounted under another name"


def test_api_keys_come_from_the_secret_never_from_the_manifest() -> None:
    (example,) = yaml_documents(SECRET_EXAMPLE)
    secret_keys = set(example["stringData"])
    by_name = {entry["name"]: entry for entry in proxy_container()["env"]}
    credentials = [name for name in by_name if name.endswith(SECRET_SUFFIXES)]
    assert {"OPENAI_API_KEY", "PROXY_ADMIN_TOKEN"} <= set(credentials)
    for name in credentials:
        reference = by_name[name].get("valueFrom", {}).get("secretKeyRef")
        assert reference is not None, f"{name} is written into the Deployment instead of read from a Secret"
        assert reference["name"] == example["metadata"]["name"], name
        assert reference["key"] in secret_keys, f"{name}: key {reference['key']!r} is not in {SECRET_EXAMPLE.name}"
    for name in credentials:
        value = compose_env().get(name)
        assert value is None or re.fullmatch(r"\$\{[A-Z0-9_]+(:-)?\}", value), f"compose.yaml writes {name} out"


def test_resources_have_requests_within_limits() -> None:
    resources = proxy_container()["resources"]
    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource


def test_the_pod_runs_as_the_images_non_root_user() -> None:
    security = pod_spec()["securityContext"]
    image_user = dockerfile_value("USER")
    assert image_user.split(":")[0].isdigit(), "a numeric USER lets runAsNonRoot verify the image"
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(image_user.split(":")[0]) != 0


# --- every variable, everywhere ---------------------------------------------------------------


def configured_variables() -> dict[str, list[str]]:
    """Variable -> the files that set it (the image's own proxy variables included)."""
    sources: dict[str, list[str]] = {}
    for name in deployment_env():
        sources.setdefault(name, []).append("config/k8s/deployment.yaml")
    for name in compose_env():
        sources.setdefault(name, []).append("compose.yaml")
    for name in dockerfile_env():
        if name not in NOT_PROXY_VARIABLES:
            sources.setdefault(name, []).append("Dockerfile")
    return sources


def test_every_variable_the_deployment_files_set_is_read_by_the_proxy() -> None:
    # The check itself tells a real setting from a misspelt one.
    assert proxy_reads("PROXY_SHUTDOWN_GRACE")
    assert proxy_reads("OPENAI_API_KEY")
    assert not proxy_reads("PROXY_SHUTDOWN_GRACE_SECONDS")
    variables = configured_variables()
    assert {"PROXY_SHUTDOWN_GRACE", "PROXY_PORT", "OPENAI_API_KEY", "REDIS_URL"} <= set(variables)
    ignored = {name: files for name, files in variables.items() if not proxy_reads(name)}
    assert ignored == {}, f"variables the proxy never reads: {ignored}"


def test_every_variable_the_deployment_files_set_is_documented() -> None:
    undocumented = set(configured_variables()) - documented_variables()
    assert undocumented == set(), f"not in the README's configuration reference: {sorted(undocumented)}"


def test_the_deployment_and_compose_environments_are_valid_settings() -> None:
    deployment = Settings.from_env(deployment_env())
    assert deployment.redis_url is not None
    assert deployment.upstreams["openai"].api_key == secret_sentinel("OPENAI_API_KEY")
    compose_settings = Settings.from_env({name: interpolate(value) for name, value in compose_env().items()})
    assert compose_settings.redis_url == "redis://redis:6379/0"


# --- compose ------------------------------------------------------------------------------------


def test_compose_starts_the_proxy_once_redis_is_healthy() -> None:
    services = compose()["services"]
    assert services["proxy"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    redis_url = Settings.from_env({name: interpolate(value) for name, value in compose_env().items()}).redis_url
    assert redis_url is not None
    assert redis_url.startswith("redis://redis:")


def test_compose_runs_redis_with_config_redis_conf() -> None:
    redis = compose()["services"]["redis"]
    mounts = dict(volume.split(":")[:2] for volume in redis["volumes"])
    target = mounts["./config/redis.conf"]
    assert (REPO / "config" / "redis.conf").is_file()
    assert redis["command"][:2] == ["redis-server", target]
    assert "ports" not in redis, "the cache Redis has no password: it must not be published"


def test_compose_proxy_port_healthcheck_and_stop_period() -> None:
    proxy = compose()["services"]["proxy"]
    settings = Settings.from_env({name: interpolate(value) for name, value in compose_env().items()})
    (mapping,) = proxy["ports"]
    assert int(interpolate(mapping).rsplit(":", 1)[1]) == settings.port
    check = " ".join(proxy["healthcheck"]["test"])
    url = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/]*)", check)
    assert url is not None, check
    assert (int(url.group(1)), url.group(2)) == (settings.port, "/healthz")
    assert {"PROXY_DRAIN_DELAY", "PROXY_SHUTDOWN_GRACE"} <= compose_env().keys()
    # The engine's default stop timeout is 10 s; without stop_grace_period the drain is cut short.
    assert drain_seconds(settings) < compose_seconds(proxy["stop_grace_period"]) <= drain_seconds(settings) + 15


# --- config/redis.conf ----------------------------------------------------------------------------


def redis_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in REDIS_CONF.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, *arguments = shlex.split(line)
            directives[name.lower()] = arguments
    return directives


def test_redis_conf_is_a_bounded_lfu_cache_without_persistence() -> None:
    directives = redis_directives()
    assert directives["maxmemory-policy"] == ["allkeys-lfu"]
    match = re.fullmatch(r"(\d+)(mb|gb)", directives["maxmemory"][0].lower())
    assert match is not None, "a maxmemory bound, so Redis evicts instead of growing"
    assert int(match.group(1)) > 0
    assert directives["save"] == [""], "no RDB snapshots"
    assert directives["appendonly"] == ["no"], "no append-only file"
    # The proxy's container reaches Redis over the compose network, not over loopback.
    assert "*" in directives["bind"] or "0.0.0.0" in directives["bind"]
    assert directives["protected-mode"] == ["no"] or "requirepass" in directives


# --- Dockerfile -----------------------------------------------------------------------------------


def test_the_dockerfile_builds_a_venv_and_runs_the_proxy_command() -> None:
    froms = [arguments for name, arguments in dockerfile_instructions() if name == "FROM"]
    assert len(froms) >= 2, "multi-stage: the build tools stay out of the final image"
    for base in froms:
        match = re.match(r"python:3\.(\d+)-slim", base)
        assert match is not None, base
        assert int(match.group(1)) >= 11, base
    assert any(name == "COPY" and "--from=build" in args and "/opt/venv" in args for name, args in final_stage())
    command = json.loads(dockerfile_value("CMD"))
    setup = (REPO / "setup.cfg").read_text(encoding="utf-8")
    assert re.search(rf"^\s*{re.escape(command[0])} = proxy\.cli:main$", setup, flags=re.MULTILINE)
    assert build_parser().parse_args(command[1:]).command == "serve"


def test_the_image_exposes_and_healthchecks_the_proxy_port() -> None:
    settings = Settings.from_env(dockerfile_env())
    assert dockerfile_value("EXPOSE") == str(settings.port) == str(Settings.from_env({}).port)
    healthcheck = dockerfile_value("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "PROXY_PORT" in healthcheck, "the check follows PROXY_PORT when it is changed"
    assert Path(dockerfile_env()["PROXY_ROUTES"]).parent == Path(dockerfile_value("WORKDIR")) / "config"


def test_the_build_context_leaves_out_secrets_and_the_deployment_files() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".git", ".venv", "tests", "config/k8s"} <= ignored
