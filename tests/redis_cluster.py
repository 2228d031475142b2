"""A real local Redis Cluster for the tests: three primaries with one replica each, on free ports."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
from pathlib import Path

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

NODE_TIMEOUT_MS = 1000


async def wait_for_redis(port: int) -> None:
    """Until the redis-server on `port` answers PING (five seconds at most)."""
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        for _ in range(100):
            try:
                await client.ping()
                return
            except redis.ConnectionError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"redis-server on {port} did not start")
    finally:
        await client.aclose()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus port (port + 10000) is free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        port = rng.randrange(20000, 50000)
        if port not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    return ports


class LocalCluster:
    def __init__(self, directory: Path, nodes: int = 6) -> None:
        self.directory = directory
        self.ports = cluster_ports(nodes)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    async def start(self) -> None:
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        assert server, "redis-server must be installed (.ci/run installs it)"
        assert cli, "redis-cli must be installed (.ci/run installs it)"
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.processes[port] = subprocess.Popen(  # noqa: ASYNC220 - long-lived children
                [
                    server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A replica may take over however recently it synced: the tests kill primaries early.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(node_dir),
                ],
                stdout=subprocess.DEVNULL,
            )
        for port in self.ports:
            await wait_for_redis(port)
        create = await asyncio.create_subprocess_exec(
            cli,
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(create.communicate(), 60)
        assert create.returncode == 0, output.decode(errors="replace")
        await self.wait_until_ok()

    async def wait_until_ok(self, attempts: int = 200) -> None:
        """Until every live node says cluster_state:ok and every slot is served."""
        for _ in range(attempts):
            states = []
            for port, process in self.processes.items():
                if process.poll() is not None:
                    continue
                client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
                try:
                    info = await client.cluster("INFO")
                    replication = await client.info("replication")
                    synced = replication.get("role") == "master" or replication.get("master_link_status") == "up"
                    states.append(
                        info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384 and synced
                    )
                except redis.RedisError:
                    states.append(False)
                finally:
                    await client.aclose()
            if states and all(states):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the cluster did not become healthy")

    async def primary_of(self, key: str) -> int:
        live = next(port for port, process in self.processes.items() if process.poll() is None)
        client = RedisCluster(host="127.0.0.1", port=live, socket_timeout=1)
        try:
            await client.initialize()
            return int(client.get_node_from_key(key).port)
        finally:
            await client.aclose()

    def kill(self, port: int) -> None:
        self.processes[port].kill()
        self.processes[port].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
