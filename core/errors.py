"""One error tree for the whole engine.

Callers catch at the level they can act on::

    KanalError                      anything Kanal raises on purpose
    ├── ConfigError                 a job or mapping file is wrong (exit 2)
    ├── ConnectorError              a connector cannot do its work
    │   ├── Unreachable             transient: system down, timeout, 5xx, 429
    │   │   └── BrokerUnavailable   the Kafka broker cannot be reached
    │   ├── AuthError               wrong credentials: retrying will not help
    │   └── BatchRejected           the target refused the data of a batch;
    │                               the engine bisects it to find the records
    └── JobFailed                   the run ended with records not delivered
                                    under error policy `fail` (exit 1)

Messages never carry secrets: every message passes through `redact`, which
removes the values registered with `register_secret` (passwords, tokens, the
password part of DSNs) wherever they appear.
"""

from __future__ import annotations

import re
import threading

_secrets: set[str] = set()
_lock = threading.Lock()
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from any later message."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return `text` without registered secrets or DSN passwords."""
    text = _DSN_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class KanalError(Exception):
    """Base of every error Kanal raises on purpose; its message is safe to show."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(KanalError):
    """A job file, mapping file or connector config is invalid.

    `problems` holds one line per problem, each naming the file and the path
    inside it, so that a user can fix everything in one pass.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = [redact(p) for p in (problems or [])]
        full = message if not self.problems else message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(full)


class ConnectorError(KanalError):
    """A connector could not do its work; `system` names which one."""

    def __init__(self, system: str, message: str) -> None:
        self.system = system
        super().__init__(f"{system}: {message}")


class Unreachable(ConnectorError):
    """A transient failure worth retrying (connection, timeout, 5xx, 429)."""

    def __init__(self, system: str, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(system, message)


class BrokerUnavailable(Unreachable):
    """The Kafka broker cannot be reached."""


class AuthError(ConnectorError):
    """Credentials were refused; retrying would only lock the account."""


class BatchRejected(ConnectorError):
    """The target refused a batch because of its data (not because it is down).

    The engine splits such a batch until it finds the records at fault, so one
    bad record never fails the others.
    """


class JobFailed(KanalError):
    """The run ended with records that were not delivered (policy `fail`)."""
