"""Shared fixtures: a real Kafka-compatible broker and real Redis servers.

* ``broker`` (session): an :class:`~streams.broker.EmbeddedBroker` (Tansu) on a free
  loopback port, started once and stopped at the end of the run.
* ``redis_url``: a database of the Redis at 127.0.0.1:6379 that belongs to this test
  alone, flushed before and after. Databases 1-15 of that Redis are reserved for the test
  suite; a short-lived lock key in database 0 (``tracewatch:pytest:db-lock:N``) keeps two
  concurrent test runs apart. Without a Redis the test is skipped, or fails when the
  environment variable ``CI`` is set.
* ``redis_server``: a factory that starts private ``redis-server`` processes (AOF on, no
  RDB snapshots, data in a temporary directory) for restart and persistence tests::

      def test_survives_restart(redis_server):
          server = redis_server()
          ...  # write through server.url
          server.restart(hard=True)  # SIGKILL, then start again on the same port and dir
          ...  # read through server.url

Integration tests are marked ``integration`` (``pytest -m "not integration"`` skips them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.compiled import stale_warning

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: Databases of the shared Redis that the tests may use (0 is left to people).
TEST_DBS = range(1, 16)
LOCK_PREFIX = "tracewatch:pytest:db-lock:"
#: A lock outlives a crashed test run by at most this long.
LOCK_TTL_S = 900


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _missing(reason: str) -> None:
    """Skip the test locally; fail it in CI, where the service must be there."""
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


# ---------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A Tansu broker for the whole test session; its log is kept in the pytest tmp dir."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    embedded = EmbeddedBroker(log_path=log_path)
    embedded.start(timeout=30.0)
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make topic names unique to this test (the session broker is shared)."""
    tag = uuid.uuid4().hex[:8]

    def make(base: str) -> str:
        name = f"t.{request.node.name[:40]}.{base}.{tag}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", name)

    return make


# ---------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of an empty database of the local Redis, locked and flushed for this test."""
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_timeout=2.0,
                        socket_connect_timeout=2.0)
    try:
        admin.ping()
    except redis.RedisError as exc:
        admin.close()
        _missing(f"no Redis answers at {REDIS_HOST}:{REDIS_PORT} ({exc})")
    token = uuid.uuid4().hex
    chosen: int | None = None
    try:
        for db in TEST_DBS:
            if admin.set(f"{LOCK_PREFIX}{db}", token, nx=True, ex=LOCK_TTL_S):
                chosen = db
                break
        if chosen is None:
            _missing(f"all test databases {TEST_DBS.start}-{TEST_DBS.stop - 1} of the local "
                     "Redis are locked by other test runs")
        assert chosen is not None
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=chosen, socket_timeout=5.0)
        try:
            client.flushdb()
            yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{chosen}"
        finally:
            client.flushdb()
            client.close()
    finally:
        if chosen is not None:
            lock = f"{LOCK_PREFIX}{chosen}"
            if admin.get(lock) == token.encode():
                admin.delete(lock)
        admin.close()


class RedisServer:
    """A private ``redis-server`` on a free loopback port, AOF on, data in ``directory``."""

    def __init__(self, binary: str, directory: Path, appendfsync: str = "everysec") -> None:
        self.binary = binary
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; stays the same across restarts."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING (after loading its AOF)."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0,
                                 socket_connect_timeout=1.0)
            try:
                if client.ping():
                    return
            except redis.RedisError as exc:  # connection refused, or LOADING the AOF
                last = exc
            finally:
                client.close()
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start ({last}):\n{tail}")

    def stop(self, hard: bool = False) -> None:
        """Stop the server: SIGTERM (it writes its AOF first) or, with ``hard``, SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self, hard: bool = False, timeout: float = 10.0) -> None:
        """Stop (gracefully, or with ``hard`` like a crash) and start on the same port and dir."""
        self.stop(hard=hard)
        self.start(timeout=timeout)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory of private Redis servers, all stopped at the end of the test.

    ``redis_server(appendfsync="always")`` makes every write durable before the reply,
    for tests that kill the server and count on the last write.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    servers: list[RedisServer] = []

    def make(appendfsync: str = "everysec") -> RedisServer:
        server = RedisServer(binary, tmp_path / f"redis-{len(servers)}", appendfsync)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test old compiled copies of edited modules (see streams/compiled.py)."""
    warning = stale_warning()
    if warning:
        raise pytest.UsageError(warning)
