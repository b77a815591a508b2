from pathlib import Path

import pytest

from kanal.core.errors import KanalError
from kanal.core.state import StateLocked, StateStore


def test_updates_persist_and_reload(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "job")
    store.update(lambda d: d.setdefault("migration", {}).update(status="running"))
    assert StateStore(tmp_path / "job").get("migration") == {"status": "running"}
    assert not (tmp_path / "job" / "state.tmp").exists()


def test_second_process_cannot_take_the_lock(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "job").acquire()
    with pytest.raises(StateLocked, match="in use by another kanal process"):
        StateStore(tmp_path / "job").acquire()
    first.release()
    StateStore(tmp_path / "job").acquire().release()


def test_damaged_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "state.json").write_text("{not json")
    with pytest.raises(KanalError, match="state file .* is damaged"):
        StateStore(tmp_path / "job")
