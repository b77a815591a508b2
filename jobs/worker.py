"""`kanal worker DIR`: every job file of a folder in one process, each on its schedule.

Each job runs as `kanal run` would (migrate once, then deltas on the job's
`schedule:`), in its own thread with its own connections; a stop (SIGTERM)
reaches all of them, and each finishes its in-flight work. One job failing
does not stop the others; it is reported when the worker ends.

Each job's cycles are logged (`kanal.worker`, level INFO), one line each:
job, changes, duration, dead letters; a continuous job's polls are summed per
minute, so a log shows every job alive and what it moved.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kanal.core.errors import ConfigError, KanalError
from kanal.jobs.load import LoadedJob, load_job
from kanal.jobs.model import parse_schedule
from kanal.jobs.stream import Cycle, sync

log = logging.getLogger("kanal.worker")


@dataclass
class JobOutcome:
    job: str
    schedule: str
    error: str | None = None


def load_folder(folder: Path) -> list[LoadedJob]:
    """Every *.yaml / *.yml job in `folder`; all problems of all files at once."""
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not paths:
        raise ConfigError(f"{folder}: no job files (*.yaml) in this folder")
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.append(load_job(path))
        except ConfigError as exc:
            problems.append(exc.message)
    if problems:
        raise ConfigError("\n".join(problems))
    names = [j.name for j in loaded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{folder}: job name(s) used twice: {', '.join(duplicates)}")
    return loaded


def log_cycle(cycle: Cycle) -> None:
    """One line per cycle; the log format names the job (`extra`), as on every line of a job's thread."""
    dead = f", {cycle.dead_letters:,} dead letters" if cycle.dead_letters else ""
    log.info("%s changes in %.1fs%s", f"{cycle.changes:,}", cycle.seconds, dead, extra={"job": cycle.job})


def work(jobs: list[LoadedJob], stop: threading.Event, on_start: Callable[[list[JobOutcome]], None] | None = None) -> list[JobOutcome]:
    """Run `jobs` (`load_folder`) until `stop`, each in its own thread; their outcomes once all ended."""
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # the cycle lines are the worker's heartbeat: shown without --verbose
    outcomes = [JobOutcome(j.name, parse_schedule(j.job.schedule).describe()) for j in jobs]

    def run(job: LoadedJob, outcome: JobOutcome) -> None:
        try:
            sync(job, schedule=parse_schedule(job.job.schedule), migrate_first=True, stop=stop, quiet=True, on_cycle=log_cycle)
        except KanalError as exc:
            outcome.error = exc.message
            log.error("job %s failed: %s", job.name, exc.message)
        except Exception as exc:  # noqa: BLE001 - one job's bug must not end the others
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", job.name)

    threads = [threading.Thread(target=run, args=(j, o), name=f"kanal-job-{j.name}") for j, o in zip(jobs, outcomes, strict=True)]
    for t in threads:
        t.start()
    if on_start is not None:
        on_start(outcomes)
    for t in threads:
        t.join()
    return outcomes
