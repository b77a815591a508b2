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
removes the values registered with `register_secret` wherever they appear,
and the password part of any DSN. What is a secret is decided by the config,
not by where a value came from: `register_secrets` walks a loaded config and
registers the values of fields typed `SecretStr`, and text under a key named
like a credential (`password`, `token`, `secret`, `api_key`, `access_token`,
`consumer_secret`, librdkafka's `sasl.password`, `ssl.key.password`, ...).
A table name that came from `${VAR}` stays readable in messages.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, SecretBytes, SecretStr

_secrets: set[str] = set()
_lock = threading.Lock()
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


_SECRET_NAME = re.compile(
    r"(password|passwd|passphrase|secret|token|api_?key|secret_?key|private_?key|credentials?)$", re.IGNORECASE
)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from any later message.

    A DSN's password is remembered on its own too (as written and decoded),
    since drivers may quote it without the rest of the DSN.
    """
    if not value or len(value) < 3:
        return
    parts = {value}
    parts.update(m.group(2) for m in _DSN_PASSWORD.finditer(value))
    parts.update(m.group(2).strip("'") for m in _KV_PASSWORD.finditer(value))
    parts.update({unquote(p) for p in parts})
    with _lock:
        _secrets.update(p for p in parts if len(p) >= 3)


def is_secret_name(name: str) -> bool:
    """Whether a config key names a credential: `password`, `sasl.password`, `access_token`, `api_key`, ..."""
    return bool(_SECRET_NAME.search(name))


def register_secrets(value: Any, name: str = "") -> None:
    """Register every secret a config holds, at any depth.

    Secrets are the values of `SecretStr`/`SecretBytes` fields and scalar
    values under a credential-like key (`is_secret_name`); `value` may be a
    pydantic model (its extra keys included), a dict or a list.
    """
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        register_secret(secret.decode(errors="replace") if isinstance(secret, bytes) else secret)
    elif isinstance(value, BaseModel):
        for key, item in value:
            register_secrets(item, key)
    elif isinstance(value, dict):
        for key, item in value.items():
            register_secrets(item, str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            register_secrets(item, name)
    elif isinstance(value, str | int) and not isinstance(value, bool) and is_secret_name(name):
        register_secret(str(value))


def redact(text: str) -> str:
    """Return `text` without registered secrets or DSN passwords."""
    text = _DSN_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class InvalidKey(ValueError):
    """A pydantic validator's complaint about one key inside the mapping it validates.

    Raised instead of a plain ValueError, it makes the job-file problem point
    at that key's line (`job.yaml:3: kafka.bootstrap_server: ...`) rather than
    at the mapping holding it (`kanal.core.places.Problems.pydantic`).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


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
    """A transient failure worth retrying (connection, timeout, 5xx, 429).

    `answered`: the system answered (a 503, a 429), so it exists at that
    address and is only busy or down for a while: the deadline for first
    contact (`core.deadline`) does not cut its retries short.
    """

    def __init__(self, system: str, message: str, retry_after: float | None = None, *, answered: bool = False) -> None:
        self.retry_after = retry_after
        self.answered = answered
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
