"""The embedded broker claims to serve only when it is ours and answers on its port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from kanal.core.embedded import EmbeddedBroker, PortInUse, answers_kafka, owns_listener


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on (this test process, not speaking Kafka)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_given_port_that_is_taken_fails_naming_it(taken_port: int) -> None:
    with pytest.raises(PortInUse, match=f"port {taken_port} on 127.0.0.1 is in use by another program"):
        EmbeddedBroker(port=taken_port).start()


def test_a_chosen_port_taken_before_the_start_is_chosen_again() -> None:
    broker = EmbeddedBroker()
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", broker.port))
        thief.listen()
        stolen = broker.port
        with broker:
            assert broker.port != stolen
            assert broker.pid is not None and owns_listener(broker.pid, broker.port) is True
            assert owns_listener(broker.pid, stolen) is False and owns_listener(os.getpid(), stolen) is True
            assert answers_kafka(broker.port) and not answers_kafka(stolen, timeout=0.3)


def test_a_second_broker_on_the_first_ones_port_fails() -> None:
    with EmbeddedBroker() as first:
        with pytest.raises(PortInUse, match=f"port {first.port} "):
            EmbeddedBroker(port=first.port).start()
        assert first.alive() and answers_kafka(first.port)
