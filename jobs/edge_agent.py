"""`kanal edge JOB --store S1 --journal DIR`: the running store agent (API, forwarding, central updates, drop folder)."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kanal.core.errors import ConfigError
from kanal.core.kafka import KafkaConnection
from kanal.jobs.edge import Edge, EdgeOptions, iso
from kanal.jobs.edge_drop import DropFolder
from kanal.jobs.edge_http import serving
from kanal.jobs.edge_kafka import Central, Forwarder
from kanal.jobs.load import LoadedJob


@contextmanager
def only_agent(folder: Path) -> Iterator[None]:
    """One agent per journal: two would forward the same backlog and fight over the local ledger."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "agent.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another kanal edge already runs on the journal {folder}; stop it first") from None
        yield


def require_shared_broker(loaded: LoadedJob) -> None:
    if loaded.job.kafka.embedded:
        raise ConfigError(
            f"{loaded.path}: `kanal edge` forwards to the broker the aggregator reads, not to "
            "`kafka.bootstrap_servers: embedded` (memory of one process): set it to your cluster"
        )


class Agent:
    """A running store agent: its `Edge` with its applier, forwarder, central follower and drop folder (the HTTP server is `jobs.edge_http`)."""

    def __init__(self, loaded: LoadedJob, options: EdgeOptions, stop: threading.Event, **forwarding: float) -> None:
        require_shared_broker(loaded)
        self.options, self.stop = options, stop
        self.edge = Edge(loaded, options.store, options.journal)
        kafka = KafkaConnection(loaded.job.kafka)
        self.forwarder = Forwarder(self.edge, kafka, stop, **forwarding)  # type: ignore[arg-type]
        self.central = Central(self.edge, kafka, self.forwarder.topic_ready, stop)
        self.drop = DropFolder(self.edge, options.drop) if options.drop else None
        self._threads = [
            threading.Thread(target=self.forwarder.run, name="kanal-edge-forward", daemon=True),
            threading.Thread(target=self.central.run, name="kanal-edge-central", daemon=True),
            threading.Thread(target=self.edge.keep_up, args=(stop, options.keep_days), name="kanal-edge-apply", daemon=True),
        ]
        if self.drop is not None:
            self._threads.append(threading.Thread(target=self.drop.run, args=(stop,), name="kanal-edge-drop", daemon=True))

    def start(self) -> Agent:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.edge.wake.set()
        self.edge.journaled.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        self.edge.close()

    def status(self) -> dict[str, Any]:
        stats = self.edge.journal.stats()
        broker, central = self.forwarder.state, self.central.state
        return {
            "store": self.options.store,
            "journaled": stats.journaled,
            "backlog": stats.backlog,
            "oldest_unforwarded_at": iso(stats.oldest_pending_us),
            "broker": {"connected": broker.connected, "error": broker.error, "forwarded": broker.forwarded,
                       "last_forwarded_at": iso(broker.last_forwarded_us)},
            "central": {"following": central.following, "applied": central.applied,
                        "last_applied_at": iso(central.last_applied_us)},
        }  # fmt: skip


def run(loaded: LoadedJob, options: EdgeOptions, stop: threading.Event, started: Callable[[str], None]) -> None:
    """Run the store agent with its API until `stop`; `started` is told the URL once it serves."""
    with only_agent(options.journal):
        agent = Agent(loaded, options, stop)
        try:
            with serving(agent, options) as url:
                agent.start()
                started(url)
                stop.wait()
        finally:
            agent.close()
