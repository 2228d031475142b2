"""The driver: `python -m benchmarks` runs the scenarios of issue 7 and writes the results.

Servers under test run pinned to one CPU, wrk (and this driver, the fake upstream and the probes)
to the other. Everything listens on 127.0.0.1. Every process started is stopped at the end, on
failure, on Ctrl-C and on SIGTERM. Output: `benchmarks/results/` (results.md, summary.md,
results.json, PNG charts).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

import redis as redis_lib

from benchmarks import charts, report
from benchmarks.config import REPO, SCENARIOS, BenchConfig
from benchmarks.nginx import nginx_binary
from benchmarks.payloads import write_payloads
from benchmarks.processes import ProcessRegistry
from benchmarks.procinfo import machine_busy_share
from benchmarks.redisdb import BenchRedis, ForeignKeys
from benchmarks.scenarios import coalesce, hits, keys, memory, miss, profile, stream
from benchmarks.scenarios.common import RunContext
from benchmarks.servers import free_port, proxy_features, start_fake
from benchmarks.wrk import WrkMissing, wrk_binary

RUNNERS = {
    "hits": hits.run,
    "miss": miss.run,
    "stream": stream.run,
    "coalesce": coalesce.run,
    "keys": keys.run,
    "memory": memory.run,
    "profile": profile.run,
}
PACKAGES = ("aiohttp", "redis", "hiredis", "orjson", "structlog", "uvloop")
BUSY_WARNING = 0.10


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(part)) for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1e3-1e5 keys, 1e4 misses (a few minutes)")
    parser.add_argument("--only", help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}, profile")
    parser.add_argument("--duration", type=float, help=f"seconds per measured wrk run (default {defaults.duration:g})")
    parser.add_argument("--repeat", type=int, help="measured runs per point; the median by throughput is kept")
    parser.add_argument(
        "--noisy-retries",
        type=int,
        help="measure a run again, up to this many times, when other programs used the CPU meanwhile (default 2)",
    )
    parser.add_argument("--connections", type=_ints, help="hit connection counts, e.g. 1,10,50,100,1000")
    parser.add_argument("--workers", type=int, help=f"N of the N-workers rows (default {defaults.workers})")
    parser.add_argument("--workers-cpus", help="CPU list of the N-worker proxy (default: the server CPUs)")
    parser.add_argument("--keys", type=_ints, help="entry counts of the key-scaling scenario, e.g. 1e3,1e5,1e6")
    parser.add_argument("--misses", type=lambda s: int(float(s)), help="distinct misses before the RSS reading")
    parser.add_argument("--latency", type=float, help="fake upstream latency in seconds (default 0.02)")
    parser.add_argument("--redis-host", help="Redis host (default 127.0.0.1)")
    parser.add_argument("--redis-port", type=int, help="Redis port (default 6379)")
    parser.add_argument("--redis-db", type=int, help="the benchmark's own Redis database (default 12; never 0)")
    parser.add_argument(
        "--own-redis",
        action="store_true",
        help="start a private redis-server (unpinned, no persistence) instead of using the machine's",
    )
    parser.add_argument("--server-cpus", help="CPU list for the servers under test (default 0)")
    parser.add_argument("--load-cpus", help="CPU list for wrk, the fake upstream and the probes (default 1)")
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even when it is installed")
    parser.add_argument("--profile", action="store_true", help="also sample the proxy with py-spy under chat hits")
    parser.add_argument("--proxy-ref", help="benchmark the proxy of this git commit (exported), not the work tree")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each scenario, wait up to this many seconds for the machine to be idle (<10%% busy)",
    )
    parser.add_argument("--output", type=Path, help="results directory (default benchmarks/results)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the scenarios this run leaves out (--only) from the previous results.json, with a note",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the reports and charts from results.json")
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run's configuration: defaults, then --quick, then explicit options."""
    cfg = BenchConfig()
    if args.quick:
        cfg = cfg.quick()
    overrides: dict[str, Any] = {}
    for option, name in (
        ("duration", "duration"),
        ("repeat", "repeat"),
        ("noisy_retries", "noisy_retries"),
        ("connections", "connections"),
        ("workers", "workers"),
        ("workers_cpus", "workers_cpus"),
        ("keys", "key_counts"),
        ("misses", "miss_count"),
        ("latency", "upstream_latency"),
        ("redis_host", "redis_host"),
        ("redis_port", "redis_port"),
        ("redis_db", "redis_db"),
        ("server_cpus", "server_cpus"),
        ("load_cpus", "load_cpus"),
        ("output", "output"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[name] = value
    if args.only:
        chosen = tuple(part.strip() for part in args.only.split(",") if part.strip())
        unknown = [name for name in chosen if name not in (*SCENARIOS, "profile")]
        if unknown:
            raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}, profile")
        overrides["scenarios"] = tuple(name for name in chosen if name != "profile")
        if "profile" in chosen:
            overrides["profile"] = True
    if args.no_nginx:
        overrides["nginx"] = False
    if args.profile:
        overrides["profile"] = True
    if args.own_redis:
        overrides["own_redis"] = True
    return replace(cfg, **overrides)


def _cpus(spec: str) -> set[int]:
    found: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def _command_line(argv: list[str]) -> str:
    """The first line a command prints (stdout, else stderr), or "" when it cannot run."""
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    lines = (completed.stdout.strip() or completed.stderr.strip()).splitlines()
    return lines[0] if lines else ""


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _proxy_source(cfg: BenchConfig, ref: str | None) -> str:
    if ref:
        sha = _command_line(["git", "-C", str(REPO), "rev-parse", "--short", ref])
        return f"commit {sha} (`--proxy-ref {ref}`)"
    sha = _command_line(["git", "-C", str(cfg.proxy_src), "rev-parse", "--short", "HEAD"]) or "?"
    status = subprocess.run(
        ["git", "-C", str(cfg.proxy_src), "status", "--porcelain", "--", "proxy", "config"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    changed = len([line for line in status.splitlines() if line.strip()])
    return f"work tree at {sha}" + (f" with {changed} changed file(s) under proxy/ and config/" if changed else "")


def metadata(cfg: BenchConfig, redis_version: str, ref: str | None) -> dict[str, Any]:
    """Where and with what the run happened."""
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    binary = nginx_binary()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": ", ".join(versions),
        "wrk": _command_line([wrk_binary(), "-v"]).split("[")[0].strip(),
        "nginx": _command_line([binary, "-v"]).replace("nginx version: ", "") if binary and cfg.nginx else None,
        "redis_version": redis_version,
        "proxy_source": _proxy_source(cfg, ref),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
    }


def export_ref(ref: str, destination: Path) -> Path:
    """`git archive` the proxy package and config of `ref` into `destination`."""
    destination.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "proxy", "config"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination


def merge_previous(results: dict[str, Any], directory: Path) -> None:
    """Copy into `results` every scenario it lacks from the previous `results.json` in `directory`."""
    previous_file = directory / "results.json"
    if not previous_file.exists():
        return
    previous = json.loads(previous_file.read_text())
    when = previous.get("meta", {}).get("date", "?")
    origins = results.setdefault("origins", {})
    merged = []
    for name in [*SCENARIOS, "profile"]:
        if name not in results and name in previous and name not in results["errors"]:
            results[name] = previous[name]
            origins[name] = previous.get("origins", {}).get(name, when)
            merged.append(name)
    # The RSS peak target covers every scenario shown: the peaks of the scenarios kept from the
    # previous run come along (not that run's overall peak, which may come from one measured again).
    peaks = results.setdefault("proxy_rss_peaks", {})
    for name in merged:
        if name in previous.get("proxy_rss_peaks", {}):
            peaks[name] = previous["proxy_rss_peaks"][name]
    found = [peak for peak in peaks.values() if peak]
    results["proxy_rss_peak"] = max(found) if found else None


def write_outputs(results: dict[str, Any], directory: Path) -> None:
    """results.json, the charts, results.md and summary.md."""
    directory.mkdir(parents=True, exist_ok=True)
    results["charts"] = charts.draw_all(results, directory)
    (directory / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (directory / "results.md").write_text(report.full_report(results))
    (directory / "summary.md").write_text(report.summary_report(results))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare_process(cfg: BenchConfig) -> None:
    """Check the CPUs, raise the open-file limit for 1000 connections, pin this driver to the load CPUs."""
    available = os.sched_getaffinity(0)
    server, load = _cpus(cfg.server_cpus), _cpus(cfg.load_cpus)
    if not server <= available or not load <= available:
        raise SystemExit(f"CPUs {cfg.server_cpus} / {cfg.load_cpus} are not all available here ({sorted(available)})")
    if server & load:
        print("warning: the server and load CPUs overlap; figures will not be comparable", file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    os.sched_setaffinity(0, load)


def start_redis(registry: ProcessRegistry) -> int:
    """A private redis-server on a free port, without persistence; returns its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--own-redis needs redis-server (apt-get install -y redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = registry.start("redis-server", argv, cpus=None, stdout_to_log=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis_lib.Redis(port=port, socket_timeout=1).ping():
                return port
        except redis_lib.ConnectionError:
            time.sleep(0.05)
        if not child.alive():
            break
    raise SystemExit(f"redis-server did not start: {child.log_tail()}")


def wait_quiet(limit: float) -> float:
    """The machine's busy share, after waiting up to `limit` seconds for it to fall below the warning level."""
    deadline = time.monotonic() + limit
    while True:
        busy = machine_busy_share(1.0)
        if busy <= BUSY_WARNING or time.monotonic() >= deadline:
            return busy


def run_suite(cfg: BenchConfig, ref: str | None, *, quiet_wait: float = 0.0) -> tuple[dict[str, Any], bool]:
    """Run the chosen scenarios; return the results and whether the run was interrupted."""
    log_file: list[str] = []

    def log(line: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {line}"
        log_file.append(stamped)
        print(stamped, flush=True)

    cfg.output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="artstory-bench-"))
    workdir.chmod(0o755)  # nginx's workers, which drop root, write their cache below it
    registry = ProcessRegistry(workdir / "logs")
    atexit.register(registry.stop_all)
    if cfg.own_redis:
        cfg = replace(cfg, redis_host="127.0.0.1", redis_port=start_redis(registry))
    redis = BenchRedis(cfg.redis_host, cfg.redis_port, cfg.redis_db, cfg.key_prefix)
    redis.check_own()
    busy = machine_busy_share(1.0)
    if busy > BUSY_WARNING:
        log(f"warning: the machine is {busy:.0%} busy before the run; figures may be noisy")
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "meta": {**metadata(cfg, redis.server_version(), ref), "busy_before": round(busy, 3)},
        "notes": [],
        "errors": {},
    }
    interrupted = False
    started = time.monotonic()
    ctx: RunContext | None = None
    try:
        if ref:
            cfg = replace(cfg, proxy_src=export_ref(ref, workdir / "proxy-src"))
        redis.flush()
        chat, image, template = write_payloads(workdir / "payloads", answer_bytes=cfg.chat_answer_bytes)
        fake = start_fake(cfg, registry)
        ctx = RunContext(
            cfg=cfg,
            registry=registry,
            fake=fake,
            redis=redis,
            chat=chat,
            image=image,
            unique_template=template,
            features=proxy_features(cfg),
            salt=f"r{int(time.time())}",
            log=log,
            redis_pid=redis.server_pid(),
        )
        results["meta"]["proxy_features"] = ctx.features.describe()
        chosen = [*cfg.scenarios, *(["profile"] if cfg.profile else [])]
        results["meta"]["busy_by_scenario"] = {}
        for name in chosen:
            busy = wait_quiet(quiet_wait)
            results["meta"]["busy_by_scenario"][name] = round(busy, 3)
            log(f"== {name} (machine {busy:.0%} busy before it)")
            seen = len(ctx.proxy_rss)
            try:
                results[name] = RUNNERS[name](ctx)
                results.setdefault("origins", {})[name] = results["meta"]["date"]
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} failed: {exc}\n{traceback.format_exc()}")
                with contextlib.suppress(Exception):
                    redis.flush()
            scenario_peaks = [peak for peak in ctx.proxy_rss[seen:] if peak]
            if scenario_peaks:
                results.setdefault("proxy_rss_peaks", {})[name] = max(scenario_peaks)
    except KeyboardInterrupt:
        interrupted = True
        results["notes"].append("the run was interrupted; the figures are partial")
        log("interrupted: stopping every process started")
    except Exception as exc:
        results["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        log(f"the run could not start: {exc}\n{traceback.format_exc()}")
    finally:
        if not cfg.own_redis:  # a private server takes its data with it
            try:
                redis.flush()
            except Exception as exc:
                log(f"could not clean Redis database {cfg.redis_db}: {exc}")
        redis.close()
        registry.stop_all()
    peaks = [peak for peak in (results.get("proxy_rss_peaks") or {}).values() if peak]
    results["proxy_rss_peak"] = max(peaks) if peaks else None
    results["meta"]["busy_after"] = round(machine_busy_share(0.5), 3)
    results["meta"]["minutes"] = round((time.monotonic() - started) / 60, 1)
    if cfg.own_redis:
        results["notes"].append("Redis: a private redis-server started for the run, not pinned")
    else:
        results["notes"].append("Redis is the machine's own server, not pinned: it shares both CPUs with the rest")
    if "memory" in results and cfg.miss_count < 1_000_000:
        results["notes"].append(f"RSS after misses measured after {cfg.miss_count:,} misses, not 1e6 (`--misses 1e6`)")
    if results["errors"]:
        log(f"logs kept in {workdir / 'logs'}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    (cfg.output).mkdir(parents=True, exist_ok=True)
    (cfg.output / "run.log").write_text("\n".join(log_file) + "\n")
    return results, interrupted


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks`."""
    args = build_parser().parse_args(argv)
    cfg = config_from(args)
    if args.report_only:
        results = json.loads((cfg.output / "results.json").read_text())
        write_outputs(results, cfg.output)
        print(f"rewrote the reports in {cfg.output}")
        return 0
    try:
        wrk_binary()
    except WrkMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print("error: taskset is missing (util-linux)", file=sys.stderr)
        return 2
    # Ctrl-C, SIGTERM and SIGHUP all stop the run cleanly (SIGINT too when a shell started us
    # in the background with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    prepare_process(cfg)
    try:
        results, interrupted = run_suite(cfg, args.proxy_ref, quiet_wait=args.wait_quiet)
    except ForeignKeys as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except redis_lib.ConnectionError as exc:
        print(f"error: Redis does not answer ({exc}); start it or pass --redis-host/--redis-port", file=sys.stderr)
        return 2
    if args.merge:
        merge_previous(results, cfg.output)
    write_outputs(results, cfg.output)
    print(f"\nresults: {cfg.output / 'results.md'}\n")
    print(report.targets_section(results))
    if interrupted:
        return 130
    return 1 if results["errors"] else 0
