"""The job file, validated with pydantic (reference: docs/job-file.md, generated from these models).

Connector-specific blocks (`config`, per-entity options) are validated
against the connector's own models in `jobs.load`, so a typo anywhere in a job
file is reported with its path before anything runs.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from kanal.core.inventory.rules import ChannelRules
from kanal.core.kafka import KafkaSettings
from kanal.core.retry import RetryPolicy
from kanal.core.schedule import Continuous, Schedule, parse_cron, parse_every, parse_timezone

_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_entities(entities: dict[str, Any]) -> dict[str, Any]:
    """`prices:` without options means the defaults. Unknown entity names are
    reported by `jobs.load`, at their own line."""
    return {k: (v or {}) for k, v in entities.items()}


class SourceSpec(Strict):
    connector: str = Field(description="installed connector name (see `kanal connectors`)")
    config: dict[str, Any] = Field(
        default_factory=dict, description="the connector's settings (docs/connector-options.md)"
    )
    entities: dict[str, dict[str, Any] | None] = Field(
        min_length=1, description="the entities to read, each with its options (empty: the connector's defaults)"
    )

    @field_validator("entities")
    @classmethod
    def _entities(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _known_entities(value)


class SinkSpec(Strict):
    name: str = Field(pattern=_NAME, description="names the consumer group and the sink in reports")
    connector: str = Field(description="installed connector name (see `kanal connectors`)")
    config: dict[str, Any] = Field(
        default_factory=dict, description="the connector's settings (docs/connector-options.md)"
    )
    entities: dict[str, dict[str, Any] | None] = Field(
        min_length=1, description="the entities to write, each with its options; the source must provide them"
    )

    @field_validator("entities")
    @classmethod
    def _entities(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _known_entities(value)


class ErrorPolicy(str, Enum):
    DLQ = "dlq"
    FAIL = "fail"


class ErrorsSpec(Strict):
    policy: ErrorPolicy = Field(ErrorPolicy.DLQ, description="dlq: set bad records aside; fail: stop the job")
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="how long to wait for a system that cannot be reached"
    )


class BatchSpec(Strict):
    message_rows: int = Field(10_000, ge=100, le=200_000, description="records per bulk Kafka message")
    sink_rows: int = Field(100_000, ge=1_000, le=2_000_000, description="records per sink write")
    source_workers: int = Field(2, ge=1, le=64, description="chunks read in parallel")
    sink_writers: int = Field(2, ge=1, le=64, description="parallel writers per sink")
    max_in_flight: int = Field(48, ge=1, le=10_000, description="unacknowledged messages before sources wait")


class CronSchedule(Strict):
    """`schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}`: a cron expression on a zone's wall clock."""

    cron: str = Field(description="5-field cron expression: minute hour day-of-month month day-of-week")
    timezone: str = Field("UTC", description="IANA time zone whose wall clock the expression reads, e.g. Europe/Berlin")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return parse_timezone(value).key

    @model_validator(mode="after")
    def _cron(self) -> CronSchedule:
        parse_cron(self.cron, self.timezone)
        return self


class Job(Strict):
    name: str = Field(pattern=_NAME, description="job name: topics, groups and state are named after it")
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="the broker (default: the embedded one, in memory)"
    )
    source: SourceSpec = Field(description="the system records are read from")
    sinks: list[SinkSpec] = Field(min_length=1, description="the systems records are written to")
    errors: ErrorsSpec = Field(default_factory=ErrorsSpec, description="refused records and unreachable systems")
    batch: BatchSpec = Field(default_factory=BatchSpec, description="sizes and parallelism of a migration")
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="how long migrate/run/sync/check try to reach the source and each sink at start before failing "
        "(the broker: kafka.connect_timeout_s); an outage during a run is waited for within errors.retry",
    )
    state_dir: str | None = Field(None, description="where checkpoints live (default: .kanal/ beside the job file)")
    inventory: ChannelRules | None = Field(
        None, description="real-time inventory: sales channels and reservations for `kanal inventory` (docs/inventory.md)"
    )
    schedule: str | CronSchedule = Field(
        "continuous",
        description=(
            "when `kanal worker` and `kanal run` sync deltas: continuous, 'every 5m', a cron expression "
            "'*/5 * * * *' (UTC), or {cron: '0 2 * * *', timezone: Europe/Berlin}"
        ),
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_form(cls, value: object) -> object:
        """A mapping is validated here, so its errors read `schedule: timezone: ...`, not as a failed union."""
        if isinstance(value, dict):
            try:
                return CronSchedule.model_validate(value)
            except ValidationError as exc:
                raise ValueError("; ".join(_problem(e) for e in exc.errors())) from None
        if not isinstance(value, str | CronSchedule):
            raise ValueError("must be continuous, 'every <duration>', a cron expression, or {cron: ..., timezone: ...}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | CronSchedule) -> str | CronSchedule:
        parse_schedule(value)
        return value


def parse_schedule(spec: str | CronSchedule) -> Schedule:
    """`continuous`, `every <duration>`, a 5-field cron expression (UTC) or a `CronSchedule`; ValueError says what is wrong."""
    if isinstance(spec, CronSchedule):
        return parse_cron(spec.cron, spec.timezone)
    text = spec.strip()
    if text == "continuous":
        return Continuous()
    if text.startswith("every "):
        return parse_every(text.removeprefix("every "))
    return parse_cron(text)


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"])
    plain = {"extra_forbidden": "unknown key", "missing": "required key is missing"}
    message = plain.get(error["type"]) or error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
