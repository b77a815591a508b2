"""Log lines for people and for log pipelines: plain text, or one JSON object per line.

Both name what a line is about: the job, and where it applies the entity
and the sink. Runners say so once per thread (`context`, `bind`, `for_job`)
through context variables, and every record logged on that thread carries
them, whichever module logged it; nothing is passed down call chains.
A thread starts with an empty context (Python does not copy it into new
threads), so a thread working for a job binds it first: the sink deliveries
do, and `in_context` hands the current context to a thread being started.

Messages and tracebacks pass through `redact`, so a secret never reaches a
log line. `setup` is called again when a subcommand's own `-v` or
`--log-format` is parsed, and replaces the handler it installed before.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from kanal.core.errors import redact

FORMATS = ("plain", "json")
_FIELDS = ("job", "entity", "sink")
_vars: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"kanal_log_{name}", default=None) for name in _FIELDS
}
_installed: logging.Handler | None = None
_json = False
F = TypeVar("F", bound=Callable[..., Any])


def bind(**fields: str | None) -> None:
    """Name the job/entity/sink of every later record on this thread (a thread's own context)."""
    for name, value in fields.items():
        _vars[name].set(value)


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    """Name the job/entity/sink of the records logged within the block."""
    tokens = [(_vars[name], _vars[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current(name: str) -> str | None:
    """The job, entity or sink the current thread works for, if it said so."""
    return _vars[name].get()


def for_job(fn: F) -> F:
    """A runner taking a `LoadedJob` first: the records of its run (and of threads it hands its context) name the job."""

    @functools.wraps(fn)
    def wrapper(loaded: Any, *args: Any, **kwargs: Any) -> Any:
        with context(job=loaded.name):
            return fn(loaded, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def in_context(target: Callable[..., Any]) -> Callable[..., Any]:
    """`target` running in a copy of the current context: for `threading.Thread(target=...)`."""
    return functools.partial(contextvars.copy_context().run, target)


class _Context(logging.Filter):
    """Puts the thread's job, entity and sink on every record (unless the call passed its own in `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _vars.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and job/entity/sink when known."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """`time level logger: job J (sink S, entity E): message`: the job is named on every line that has one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        job = getattr(record, "job", None)
        where = ", ".join(f"{n} {getattr(record, n)}" for n in ("sink", "entity") if getattr(record, n, None))
        if job and not record.message.startswith(f"job {job}"):  # some messages name their job already
            record.message = f"job {job}{f' ({where})' if where else ''}: {record.message}"
        return redact(super().formatMessage(record))


def setup(verbose: bool = False, fmt: str = "plain") -> None:
    """Log to stderr as `fmt` (plain or json): warnings by default, Kanal's own info lines too in json, all with `verbose`.

    JSON logs are meant for a log pipeline, which wants to know what a
    service does (progress, recycles), so Kanal's info lines are kept there;
    other libraries stay at warnings unless `verbose` (their info lines, an
    HTTP client's per-request ones, would drown it).
    """
    global _installed, _json
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context())
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("kanal").setLevel(logging.DEBUG if verbose else logging.INFO if fmt == "json" else logging.NOTSET)
    _installed, _json = handler, fmt == "json"


def json_mode() -> bool:
    """Whether log lines are JSON: then status lines go through logging too, never as free text on stderr."""
    return _json
