"""`kanal cleanup JOB`: drop what streaming created in the source and forget the stream position.

A replication slot that nobody reads makes PostgreSQL keep WAL forever, so a
job that is retired must give its slot back. The migration record goes too:
changes after the slot was dropped are lost to the stream, so the next
`kanal run` takes a new position and migrates again, and no gap opens.
"""

from __future__ import annotations

from kanal.core.state import StateStore
from kanal.jobs.load import LoadedJob
from kanal.jobs.pipeline import MIGRATION, STREAM, require_delta
from kanal.jobs.runtime import make_source


def cleanup(loaded: LoadedJob) -> list[str]:
    state = StateStore(loaded.state_dir).acquire()
    source = make_source(loaded)
    try:
        lines = source.cleanup(require_delta(loaded))
        if state.get(STREAM) is not None:
            state.update(lambda d: (d.pop(STREAM, None), d.pop(MIGRATION, None)))
            lines.append("forgot the stream position; the next `kanal run` migrates again")
        return lines
    finally:
        source.close()
        state.release()
