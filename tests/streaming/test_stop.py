"""SIGTERM stops `kanal run` gracefully (exit 0) at every moment, including while it starts up."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import Cli, Databases
from tests.streaming import erp


def test_sigterm_while_the_job_file_loads_is_a_graceful_stop(cli: Cli, dbs: Databases) -> None:
    """A supervisor may stop a run the moment it started; that is a stop, not an interruption (exit 130).

    The job file is a FIFO, so the run is held exactly while loading it.
    """
    erp.seed(dbs.erp, products=5)
    job = cli.folder / "job.yaml"
    os.mkfifo(job)
    proc = cli.start("run", "job.yaml", "--quiet")
    try:
        with job.open("w") as fifo:  # returns once the run has opened the job file; it waits for the text now
            proc.send_signal(signal.SIGTERM)
            fifo.write(erp.job())
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in err
