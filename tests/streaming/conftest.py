"""Streaming tests leave no replication slot behind, even when they fail.

Slot names are server-wide and an abandoned slot keeps WAL forever, so each
test's ERP database is cleared of slots afterwards (ending any session still
holding one).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Databases
from tests.waiting import wait_for


@pytest.fixture(autouse=True)
def drop_slots(dbs: Databases) -> Iterator[None]:
    yield
    dbs.erp_sql(
        "select pg_terminate_backend(active_pid) from pg_replication_slots "
        "where database = current_database() and active_pid is not null"
    )
    idle = "select count(*) = 0 from pg_replication_slots where database = current_database() and active"
    wait_for(lambda: dbs.erp_sql(idle)[0][0], 30, "slots to be released")
    dbs.erp_sql(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = current_database()"
    )
