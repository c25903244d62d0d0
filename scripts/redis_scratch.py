"""A private, throw-away ``redis-server`` for the benchmark scripts (no persistence)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis


def free_port() -> int:
    # Not streams.broker.free_port: ledger_speed.py's child imports this module before it puts
    # an older tree on sys.path, and importing `streams` here would pin it to this tree.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            time.sleep(0.05)
    server.terminate()
    raise SystemExit(f"redis-server did not start on port {port}")


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds of the server's main thread so far (``INFO cpu``)."""
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


@contextmanager
def scratch_server() -> Iterator[tuple[redis.Redis, int]]:
    """A private server on a free loopback port, and a client of it; stopped on exit."""
    port = free_port()
    server = start_server(port)
    try:
        yield redis.Redis(port=port), port
    finally:
        server.terminate()
        server.wait(timeout=30)
