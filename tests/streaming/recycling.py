"""A child process for tests/streaming/test_recycle.py: `kanal run` with a low recycle threshold.

    python recycling.py JOB RECYCLE_AFTER DIE_AT

Streams like `kanal run JOB` (embedded broker) but recycles the topics once
its messages may hold RECYCLE_AFTER bytes of the broker's memory, logging
each recycle on stderr. DIE_AT > 0: right after the DIE_AT-th topic deletion,
before the topics exist again, the process kills itself with SIGKILL: a crash
in the middle of a recycle, at a moment no outside signal can hit reliably.
The real deletion runs first.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from kanal.core.kafka import KafkaConnection
from kanal.jobs.load import load_job
from kanal.jobs.stream import sync


def die_after_deletion(number: int) -> None:
    delete = KafkaConnection.delete_topics
    deletions = 0

    def delete_then_die(self: KafkaConnection, names: list[str], timeout_s: float = 30.0) -> None:
        nonlocal deletions
        delete(self, names, timeout_s)
        deletions += 1
        if deletions == number:
            os.kill(os.getpid(), signal.SIGKILL)

    KafkaConnection.delete_topics = delete_then_die  # type: ignore[method-assign]


def main() -> None:
    job, recycle_after, die_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("kanal.stream").setLevel(logging.INFO)
    if die_at:
        die_after_deletion(die_at)
    sync(load_job(job), migrate_first=True, quiet=True, recycle_after=recycle_after)


if __name__ == "__main__":
    main()
