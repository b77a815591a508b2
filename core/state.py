"""The state store: checkpoints and plans of one job, in a JSON file under `.kanal/`.

Connectors never persist state; the engine does, here. Writes are atomic
(temporary file, fsync, rename), so a `kill -9` leaves either the previous or
the new document, never half of one. One process owns a job's folder at a time
(an exclusive lock file), so two runs of one job cannot interleave checkpoints.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kanal.core.errors import ConfigError, KanalError


class StateLocked(ConfigError):
    """Another process is running the same job: the command cannot run now (exit 2), nothing failed."""


class StateStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"
        self._lock = threading.Lock()
        self._lockfile: int | None = None
        self._doc: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise KanalError(f"state file {self.path} is damaged ({exc}); move it away to start over") from None

    def acquire(self) -> StateStore:
        """Take the job's exclusive lock for the life of this process."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(
                f"job {self.folder.name!r}: its state {self.folder} is in use by another kanal process; wait for it "
                "to finish or stop it (a job runs once at a time; state_dir: or KANAL_STATE_DIR moves the state)"
            ) from None
        self._lockfile = fd
        return self

    def release(self) -> None:
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return copy.deepcopy(self._doc.get(key, default))

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to the document and persist it atomically."""
        with self._lock:
            change(self._doc)
            self._write()

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")  # workers of one job may share the folder
        with open(tmp, "w") as fh:
            json.dump(self._doc, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
