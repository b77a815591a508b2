"""The store agent's drop folder: movement files a till or a script leaves in a folder."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from kanal.jobs.edge import Edge, Malformed, read_file

log = logging.getLogger("kanal.edge")


class DropFolder:
    """Takes complete .json and .csv files from a folder, then moves them to `done/` (or `failed/` with the reasons).

    Complete means: unchanged in size and time between two scans and not
    written to for `settle_s`. Writing a file elsewhere and moving it in is
    safest. A file taken but not moved yet (the agent was killed) is taken
    again at the next start: its movements are duplicates and ignored.
    """

    SUFFIXES = (".json", ".csv")

    def __init__(self, edge: Edge, folder: Path, *, settle_s: float = 1.0) -> None:
        self.edge, self.folder, self.settle_s = edge, folder, settle_s
        self._seen: dict[str, tuple[int, int]] = {}
        for sub in ("done", "failed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def run(self, stop: threading.Event, every_s: float = 1.0) -> None:
        while not stop.wait(every_s):
            try:
                self.scan()
            except OSError as exc:
                log.warning("cannot read the drop folder %s: %s", self.folder, exc)

    def scan(self) -> list[Path]:
        """One look at the folder; returns the files taken (or refused) now."""
        handled, now = [], time.time()
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in self.SUFFIXES:
                continue
            stat = path.stat()
            mark = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(path.name) != mark or now - stat.st_mtime < self.settle_s:
                self._seen[path.name] = mark
                continue
            self._take(path)
            self._seen.pop(path.name, None)
            handled.append(path)
        return handled

    def _take(self, path: Path) -> None:
        try:
            taken = self.edge.take(read_file(path))
        except Malformed as exc:
            target = _move(path, self.folder / "failed")
            target.with_name(target.name + ".errors.txt").write_text(_report(exc, path.suffix.lower() == ".csv"))
            log.warning("%s refused, moved to %s: %s", path.name, target, exc.message)
            return
        target = _move(path, self.folder / "done")
        log.info("%s: %d movement(s) journaled (%d new, %d duplicate), moved to %s",
                 path.name, taken.records, taken.new, taken.duplicate, target)  # fmt: skip


def _move(path: Path, folder: Path) -> Path:
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{time.monotonic_ns()}{path.suffix}"
    shutil.move(path, target)
    return target


def _report(exc: Malformed, csv: bool) -> str:
    """A refused file's reasons, one line per problem (CSV records also by line: the header is line 1)."""
    lines = [exc.message, ""]
    for p in exc.problems:
        where = f"record {p.index}" + (f" (line {p.index + 2})" if csv else "")
        lines.append(f"{where}: {p.problem}")
    return "\n".join(lines) + "\n"
