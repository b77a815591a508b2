"""The `kanal` command line: parses arguments, calls `kanal.jobs`, presents results.

Exit codes (also in `kanal --help` and the README): 0 success; 1 the run
failed; 2 the job file, a mapping file or the command line is wrong, a system
refused a job-file setting, or the job is already running; 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kanal.core import logs, registry
from kanal.core.console import console, styled
from kanal.core.errors import ConfigError, KanalError
from kanal.core.schedule import parse_cron, parse_timezone
from kanal.jobs import check as check_job
from kanal.jobs import dlq as dlq_job
from kanal.jobs import inventory as inventory_job
from kanal.jobs import reports
from kanal.jobs import scaffold
from kanal.jobs import service
from kanal.jobs import status as status_job
from kanal.jobs import worker as worker_job
from kanal.jobs.cleanup import cleanup as cleanup_job
from kanal.jobs.load import LoadedJob, load_job
from kanal.jobs.migrate import MigrationReport, migrate as run_migration
from kanal.jobs.model import parse_schedule
from kanal.jobs.stream import StreamReport, sync as run_sync

out = console()
err = console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
JOB = click.argument("job", type=click.Path(dir_okay=False))
AS_JSON = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout (progress stays on stderr)."
)


def handled(fn: F) -> F:
    """Turn Kanal errors into a clear message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _error(exc.message)
            _fail(kwargs, exc, 2)
        except KanalError as exc:
            logging.getLogger("kanal").debug("where it failed", exc_info=True)
            _error(exc.message)
            _fail(kwargs, exc, 1)
        except KeyboardInterrupt as exc:
            _say("interrupted; run the same command again to resume")
            _fail(kwargs, exc, 130)

    return wrapper  # type: ignore[return-value]


def _fail(kwargs: dict[str, Any], exc: BaseException, code: int) -> None:
    """Exit with `code`; a `--json` command first prints its failure document on stdout."""
    if kwargs.get("as_json"):
        ctx, names = click.get_current_context(), []
        while ctx.parent is not None:
            names.append(ctx.info_name or "")
            ctx = ctx.parent
        _json(reports.failed(" ".join(reversed(names)), kwargs.get("job"), exc, code))
    sys.exit(code)


def _json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, default=str))


def _load(path: str) -> LoadedJob:
    return load_job(path)


def _say(text: str, job: str | None = None) -> None:
    """A status line on stderr; a log record instead when logs are JSON (every stderr line is then JSON)."""
    if logs.json_mode():
        logging.getLogger("kanal.cli").info(text, extra={"job": job})
    else:
        err.print(text)


def _error(text: str, job: str | None = None) -> None:
    if logs.json_mode():
        logging.getLogger("kanal.cli").error(text, extra={"job": job})
    else:
        err.print(styled("error:", "red", text))


VERBOSE_HELP = "Show debug logs, including the Kafka client's."
LOG_FORMAT_HELP = "plain (default) or json: one JSON object per log line (time, level, message, logger, job, entity, sink)."
SERVICE_COMMANDS = ("sync", "run", "worker")


def _log_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-v or --log-format given after the subcommand: applied on top of the global ones."""
    settings = ctx.find_root().obj
    if value and settings is not None:
        settings[param.name or ""] = value
        logs.setup(settings["verbose"], settings["log_format"])


def _service_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    ctx.find_root().obj.setdefault("service", {})[param.name] = value


def _common_options(command: click.Command) -> None:
    """Options every subcommand takes after its name; sync, run and worker also serve probes and metrics."""
    command.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, callback=_log_option,
                                       help=VERBOSE_HELP))
    command.params.append(click.Option(["--log-format"], type=click.Choice(logs.FORMATS), expose_value=False,
                                       callback=_log_option, help=LOG_FORMAT_HELP))
    if command.name not in SERVICE_COMMANDS:
        return
    command.params.extend([
        click.Option(["--http-port"], type=click.IntRange(1, 65535), metavar="PORT", expose_value=False,
                     callback=_service_option, help="Serve /metrics (Prometheus), /healthz and /readyz on PORT "
                     "(see docs/operations.md)."),
        click.Option(["--http-host"], default="127.0.0.1", show_default=True, expose_value=False,
                     callback=_service_option, help="Address --http-port listens on (0.0.0.0: every interface)."),
        click.Option(["--ready-stall-s"], type=click.FloatRange(min=1), default=service.READY_STALL_S,
                     show_default=True, expose_value=False, callback=_service_option,
                     help="/readyz answers 503 when work waits and no batch was written for this long."),
    ])  # fmt: skip


def _serving(jobs: list[LoadedJob]) -> Any:
    """The --http-port service for the jobs of this command (nothing without --http-port)."""
    options = click.get_current_context().find_root().obj.get("service", {})
    return service.serving(jobs, options.get("http_port"), options["http_host"], options["ready_stall_s"])


class _Commands(click.Group):
    """A group whose subcommands (and their groups' subcommands) take `_common_options`, e.g. `kanal sync job.yaml -v`."""

    group_class = type

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            _common_options(cmd)
        super().add_command(cmd, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="plain", help=LOG_FORMAT_HELP)
@click.version_option(package_name="kanal")
@click.pass_context
def main(ctx: click.Context, verbose: bool, log_format: str) -> None:
    """Kanal moves commerce data (customers, products, prices, stock) between
    systems through Kafka: a bulk migration first, then delta sync.

    A job file names the source, the sinks and the Kafka connection; secrets
    come from the environment (or a .env file beside the job file) as ${VAR}.
    Start with `kanal demo`, then `kanal validate JOB` and `kanal migrate JOB`.

    
    Exit codes:
      0    success
      1    the run failed: a system stayed unreachable, credentials were
           refused, records were not delivered under errors.policy: fail
      2    the job file, a mapping file or the command line is wrong, a
           system refused a setting of the job file (a missing table, a
           where: it cannot parse), or the job is already running
      130  interrupted (Ctrl-C, or SIGTERM outside sync and run, which
           finish in-flight changes and exit 0); the same command resumes
    """
    ctx.obj = {"verbose": verbose, "log_format": log_format}
    logs.setup(verbose, log_format)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a run like Ctrl-C: in-flight work is abandoned, nothing is lost."""
    raise KeyboardInterrupt


@contextmanager
def _graceful() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT ask a long run to finish in-flight work and exit 0; a second one aborts."""
    stop = threading.Event()

    def ask(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        _say("stopping: finishing in-flight changes (signal again to abort)")
        stop.set()

    previous = {s: signal.signal(s, ask) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@main.command()
@JOB
@click.option("--entity", help="Only this entity (default: every entity a sink takes).")
@click.option("--repair", is_flag=True, help="Write exactly the drifted keys to the sinks (deletes for extra ones), then verify again.")
@click.option("--keys", "shown", type=click.IntRange(0, None), default=10, show_default=True, metavar="N",
              help="Keys listed per kind of drift in the table (--json lists them all, up to 10,000).")
@AS_JSON
@handled
def verify(job: str, entity: str | None, repair: bool, shown: int, as_json: bool) -> None:
    """Compare what the source and each sink hold, per entity and key: missing, extra, different.

    Exit 1 when drift is found (with --repair: drift left after the repair).
    """
    from kanal.jobs.verify import verify as verify_job

    report = verify_job(_load(job), entity, repair=repair)
    if as_json:
        _json(report.as_dict())
    else:
        if report.repaired is not None:
            _print_drift("before repair", report.repaired, shown)
        _print_drift("after repair" if report.repaired is not None else None, report.drifts, shown)
    if report.drifted:
        sys.exit(1)


def _print_drift(title: str | None, drifts: list[Any], shown: int) -> None:
    table = Table(title=title, title_justify="left")
    for name in ("sink", "entity", "source", "sink rows", "missing", "extra", "different"):
        table.add_column(name, justify="right" if name not in ("sink", "entity") else "left")
    for d in drifts:
        counts = [str(len(k)) if d.note is None or d.sink_rows else "-" for k in (d.missing, d.extra, d.different)]
        table.add_row(d.sink, d.entity, f"{d.source_rows:,}", f"{d.sink_rows:,}", *counts)
    out.print(table)
    for d in drifts:
        if d.note:
            out.print(Text(f"  {d.sink} {d.entity}: {d.note}"))
        for kind, keys in (("missing", d.missing), ("extra", d.extra), ("different", d.different)):
            if keys and shown:
                more = f" (+{len(keys) - shown:,} more)" if len(keys) > shown else ""
                out.print(Text(f"  {d.sink} {d.entity} {kind}: {', '.join(keys[:shown])}{more}"))
    if not any(d.drifted for d in drifts):
        out.print(styled("no drift", "green"))


@main.command()
@JOB
@AS_JSON
@handled
def validate(job: str, as_json: bool) -> None:
    """Check a job file (and its mapping files) without contacting any system."""
    loaded = _load(job)
    if as_json:
        return _json(reports.validate_document(loaded))
    out.print(Text.assemble(f"{job}: valid job ", (loaded.name, "bold"), f" — source {loaded.job.source.connector} "
                            f"({', '.join(loaded.source_entities)}), sinks {', '.join(s.name for s in loaded.sinks)}"))


@main.command()
@JOB
@click.option("--sample", type=click.IntRange(1, 100_000), metavar="N",
              help="Also run the first N records of each entity through mapping and validation (nothing is written).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: each check, then each entity's sample.")
@click.pass_context
@handled
def check(ctx: click.Context, job: str, sample: int | None, as_json: bool) -> None:
    """Reach the broker, the source and every sink, and check each entity's columns; say what fails.

    Exit 1 when anything fails (with --sample: also when a sampled record would be dead-lettered).
    """
    report = check_job.check(_load(job), ctx.obj["verbose"], sample=sample)
    if as_json:
        for line in [*(r.as_dict() for r in report.results), *(s.as_dict() for s in report.samples)]:
            click.echo(json.dumps(line, ensure_ascii=False))
    else:
        _print_check(report)
    if not report.ok:
        sys.exit(1)


def _print_check(report: check_job.CheckReport) -> None:
    for r in report.results:
        where = f" {r.entity}" if r.entity else ""
        out.print(styled("ok", "green") if r.ok else styled("FAIL", "red"), f" {r.system}{where}: {r.detail}")
    for s in report.samples:
        if s.error is not None:
            out.print(styled("FAIL", "red"), f" sample {s.entity}: {s.error}")
            continue
        mark = styled("ok", "green") if s.ok else styled("FAIL", "red")
        out.print(mark, f" sample {s.entity}: {s.read} read, {s.passed} pass, {len(s.rejected)} would be dead-lettered")
        for r in s.rejected:
            where = f" ({r.stage})" if r.stage != "source" else ""
            out.print(f"      {r.entity} key {r.key!r} field {', '.join(r.fields) or '?'}{where}: {r.reason}")


@main.command()
@JOB
@click.option("--quiet", is_flag=True, help="No progress display, only the final report.")
@AS_JSON
@click.pass_context
@handled
def migrate(ctx: click.Context, job: str, quiet: bool, as_json: bool) -> None:
    """Snapshot every entity of JOB into every sink, through Kafka.

    Safe to interrupt (even kill -9): the same command resumes and the
    targets end complete, without duplicates.
    """
    report = run_migration(_load(job), console=err, quiet=quiet, verbose=ctx.obj["verbose"])
    if as_json:
        return _json(reports.migrate_document(report))
    _print_report(report, job)


def _print_report(report: MigrationReport, job: str) -> None:
    m = report.metrics
    table = Table(title=f"migration {report.job}: done in {report.seconds:.1f}s", title_justify="left")
    table.add_column("entity")
    table.add_column("source rows", justify="right")
    for sink in m.sinks:
        table.add_column(f"→ {sink}", justify="right")
    table.add_column("dead letters", justify="right")
    for name, c in sorted(m.entities.items()):
        cells = [name, f"{c.read + c.already:,}"]
        for sink in m.sinks:
            counts = ((c.unchanged[sink], "unchanged"), (c.skipped[sink], "older"), (c.failed[sink], "refused"))
            extra = [f"{n:,} {what}" for n, what in counts if n]
            cells.append(f"{c.written[sink]:,}" + (f" ({', '.join(extra)})" if extra else ""))
        cells.append(f"{c.dead:,}")
        table.add_row(*cells)
    out.print(table)
    read = sum(c.read for c in m.entities.values())
    if report.seconds and read:
        out.print(f"{read:,} records read and delivered in {report.seconds:.1f}s: {read / report.seconds:,.0f} records/s")
    if report.resumed_chunks:
        out.print(f"resumed: {report.resumed_chunks} chunks had been delivered by an earlier run")
    for note in report.finish_notes:
        out.print(note)
    dead = sum(c.dead for c in m.entities.values())
    refused = sum(sum(c.failed.values()) for c in m.entities.values())
    if dead or refused:
        out.print(f"{dead + refused:,} record(s) in the dead-letter queue: see `kanal dlq {job} show`")


@main.command()
@JOB
@click.option("--once", is_flag=True, help="Read the changes there are now, deliver them, exit.")
@click.option("--every", metavar="DURATION", help="Sync every DURATION (30s, 5m, 1h).")
@click.option("--cron", metavar="EXPR", help='Sync at the times of a 5-field cron expression, e.g. "*/5 * * * *" (UTC).')
@click.option("--timezone", metavar="ZONE", help="Read --cron on the wall clock of ZONE, e.g. Europe/Berlin (default UTC).")
@click.option("--quiet", is_flag=True, help="No progress display.")
@AS_JSON
@click.pass_context
@handled
def sync(
    ctx: click.Context, job: str, once: bool, every: str | None, cron: str | None, timezone: str | None, quiet: bool,
    as_json: bool,
) -> None:
    """Stream the deltas of JOB into every sink (continuously unless --once/--every/--cron).

    SIGTERM or Ctrl-C finish in-flight changes and exit 0; after a crash the
    same command resumes from the last delivered change.
    """
    if sum(bool(x) for x in (once, every, cron)) > 1:
        raise click.UsageError("use one of --once, --every, --cron")
    if timezone and not cron:
        raise click.UsageError("--timezone goes with --cron")
    try:
        zone = parse_timezone(timezone or "UTC").key
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timezone") from None
    try:
        schedule = parse_schedule(f"every {every}") if every else parse_cron(cron, zone) if cron else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every" if every else "--cron") from None
    with _graceful() as stop:  # before loading: a SIGTERM while starting up is a graceful stop too
        loaded = _load(job)
        with _serving([loaded]):
            report = run_sync(loaded, schedule=schedule, once=once, stop=stop, console=err, quiet=quiet,
                              verbose=ctx.obj["verbose"])
    if as_json:
        return _json(reports.stream_document("sync", report, list(loaded.source_entities)))
    _print_stream(report, job)


@main.command()
@JOB
@click.option("--quiet", is_flag=True, help="No progress display.")
@AS_JSON
@click.pass_context
@handled
def run(ctx: click.Context, job: str, quiet: bool, as_json: bool) -> None:
    """Migrate JOB, then keep streaming its deltas, without a gap between the two.

    The delta position is taken before the snapshot starts, so writes made
    during the migration arrive through the stream.
    """
    with _graceful() as stop:  # before loading: a SIGTERM while starting up is a graceful stop too
        loaded = _load(job)
        with _serving([loaded]):
            report = run_sync(loaded, schedule=parse_schedule(loaded.job.schedule), migrate_first=True, stop=stop,
                              console=err, quiet=quiet, verbose=ctx.obj["verbose"],
                              on_migrated=None if as_json else lambda migrated: _print_report(migrated, job))
    if as_json:
        return _json(reports.stream_document("run", report, list(loaded.source_entities)))
    _print_stream(report, job)


def _print_stream(report: StreamReport, job: str) -> None:
    """The stream's summary (`kanal run` printed its migration's report when the migration ended)."""
    out.print(f"sync {report.job} ({report.schedule}): {report.changes:,} changes in {report.reads:,} reads, "
              f"{report.seconds:.1f}s; position {report.position}")
    m = report.metrics
    for name, c in sorted(m.entities.items()) if m else ():
        if c.read:
            written = ", ".join(
                f"{s} {c.written[s]:,}" + "".join(f" ({n:,} {what})" for n, what in ((c.unchanged[s], "unchanged"), (c.skipped[s], "older")) if n)
                for s in m.sinks
            )
            out.print(f"  {name}: {c.read:,} changes read; written: {written}; dead letters {c.dead:,}")


@main.command()
@JOB
@click.option("--once", is_flag=True, help="Apply the movements there are now, publish what changed, exit.")
@click.pass_context
@handled
def inventory(ctx: click.Context, job: str, once: bool) -> None:
    """Turn JOB's stock movements into stock levels and channel availability (see docs/inventory.md).

    Reads the stock_movements topic, applies it to a durable ledger and
    publishes the changed stock_levels and availability records, which
    `kanal sync`/`kanal run` deliver to the job's sinks. Start it on several
    machines to share the partitions.
    """
    with _graceful() as stop:
        loaded = _load(job)
        report = inventory_job.run(loaded, stop=stop, once=once, verbose=ctx.obj["verbose"])
    out.print(f"inventory {report.job}: {report.movements:,} movements read ({report.rejected:,} refused: "
              f"`kanal dlq {job} show`), {report.levels:,} stock levels and {report.availability:,} availability "
              f"records published from partitions {sorted(report.partitions)}, {report.seconds:.1f}s")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@handled
def worker(folder: str) -> None:
    """Run every job file in FOLDER in one process, each on its `schedule:`.

    Each job migrates once, then syncs its deltas. SIGTERM stops all jobs
    gracefully.
    """
    def started(outcomes: list[worker_job.JobOutcome]) -> None:
        for o in outcomes:
            _say(f"worker: job {o.job} started ({o.schedule})", o.job)

    jobs = worker_job.load_folder(Path(folder))
    with _graceful() as stop, _serving(jobs):
        outcomes = worker_job.work(jobs, stop, started)
    failed = [o for o in outcomes if o.error]
    for o in failed:
        _error(f"job {o.job}: {o.error}", o.job)
    if failed:
        sys.exit(1)


@main.command()
@JOB
@handled
def cleanup(job: str) -> None:
    """Drop the replication slot and publication of JOB and forget its stream position."""
    for line in cleanup_job(_load(job)):
        out.print(line)


@main.command()
@JOB
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entity.")
@handled
def status(job: str, as_json: bool) -> None:
    """Checkpoints, stream position, slot WAL, consumer lag and dead letters per entity."""
    st = status_job.status(_load(job))
    if as_json:
        for document in st.documents():
            _json(document)
        return
    table = Table(title=f"{st.job}: migration {st.migration}", title_justify="left")
    for col in ("entity", "chunks done", "rows delivered", "changes delivered", "last write", "consumer lag", "dead letters"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for e in st.entities:
        lag = ", ".join(f"{s} {n:,}" for s, n in e.lag.items()) or "-"
        table.add_row(e.entity, f"{e.chunks_done}/{e.chunks}", f"{e.rows_delivered:,}", f"{e.changes_delivered:,}",
                      e.last_write or "-", lag, f"{e.dead_letters:,}")
    view = _full_width()
    view.print(table)
    for name, value in st.stream.items():
        view.print(f"{name.replace('_', ' ')}: {value}")


def _full_width() -> Console:
    """stdout for tables: on a terminal, its width; piped or redirected, every value in full (no wrapping or "…")."""
    return out if out.is_terminal else Console(soft_wrap=True, markup=False, highlight=False, width=100_000)


@main.group()
@JOB
@click.pass_context
def dlq(ctx: click.Context, job: str) -> None:
    """Inspect, replay, export or purge the dead-letter queue of JOB: `kanal dlq JOB show|replay|export|purge`."""
    ctx.obj["job"] = job


@dlq.command("show")
@click.option("--entity", help="Only this entity.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: entity, key, reason, stage, sink, record.")
@click.option("--limit", type=int, default=50, show_default=True, help="Rows in the table view (JSON shows all).")
@click.pass_context
@handled
def dlq_show(ctx: click.Context, entity: str | None, as_json: bool, limit: int) -> None:
    """List dead letters with the reason each was set aside."""
    entries = dlq_job.show(_load(ctx.obj["job"]), entity)
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry, default=str, ensure_ascii=False))
        return
    table = Table(title=f"{len(entries)} dead letter(s)", title_justify="left")
    for col in ("entity", "key", "stage", "reason"):
        table.add_column(col)
    for entry in entries[:limit]:
        stage = entry["stage"] + (f" ({entry['sink']})" if entry.get("sink") else "")
        table.add_row(entry["entity"], str(entry["key"]), stage, entry["reason"])
    _full_width().print(table)


@dlq.command("replay")
@click.option("--entity", help="Only this entity.")
@click.pass_context
@handled
def dlq_replay(ctx: click.Context, entity: str | None) -> None:
    """Validate dead letters again and write those that pass to the sinks."""
    result = dlq_job.replay(_load(ctx.obj["job"]), entity)
    out.print(f"replayed {result.replayed}, still failing {result.still_failing}")
    if result.still_failing:
        sys.exit(1)


@dlq.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--entity", help="Only this entity.")
@click.pass_context
@handled
def dlq_export(ctx: click.Context, file: str, entity: str | None) -> None:
    """Write the dead letters to FILE: JSON Lines (.jsonl, .ndjson) or CSV (.csv), by its extension."""
    count = dlq_job.export(_load(ctx.obj["job"]), Path(file), entity)
    out.print(f"exported {count:,} dead letter(s) to {file}")


@dlq.command("purge")
@click.option("--entity", help="Only this entity.")
@click.option("--yes", is_flag=True, help="Do not ask: drop them (required when not on a terminal).")
@click.pass_context
@handled
def dlq_purge(ctx: click.Context, entity: str | None, yes: bool) -> None:
    """Drop the dead letters of JOB (or of one entity) from its local store. The DLQ topic is not touched."""
    loaded = _load(ctx.obj["job"])
    what = f"the dead letters of {entity}" if entity else "every dead letter"
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"this drops {what} of job {loaded.name}; add --yes to confirm")
        click.confirm(f"Drop {what} of job {loaded.name}? `kanal dlq ... export FILE` saves them first", abort=True)
    count = dlq_job.purge(loaded, entity)
    out.print(f"purged {count:,} dead letter(s)" + (f" of {entity}" if entity else ""))


@main.command()
@JOB
@click.option("--entity", required=True, help="The source entity to reset.")
@click.option("--snapshot", is_flag=True, help="Read the entity again on the next migrate/run (default without --cursor).")
@click.option("--cursor", metavar="TIME",
              help="Move the entity's cursor (delta: {cursor: ...}) to TIME, ISO 8601 (2026-01-01T00:00:00Z).")
@handled
def reset(job: str, entity: str, snapshot: bool, cursor: str | None) -> None:
    """Read one entity of JOB again, and/or move its delta cursor; the job must not be running.

    A snapshot again: the next `kanal migrate` or `kanal run` reads that
    entity completely (changes after the stored stream position still arrive
    through the stream). --cursor: the next stream reads the entity's rows
    changed since TIME.
    """
    from kanal.jobs.reset import reset as reset_job

    for line in reset_job(_load(job), entity, snapshot=snapshot or cursor is None, cursor=cursor):
        out.print(line)


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per connector, with the JSON Schemas of its config and per-entity options.")
@handled
def connectors(as_json: bool) -> None:
    """Installed connectors and their declared capabilities."""
    specs = registry.installed()
    if as_json:
        for spec in specs.values():
            caps = spec.capabilities
            click.echo(json.dumps({
                "name": spec.name, "description": spec.description, "source": spec.source is not None,
                "sink": spec.sink is not None, "entities": list(caps.entities), "delta": [d.value for d in caps.delta],
                "supports_deletes": caps.supports_deletes, "config": spec.config.model_json_schema(),
                "entity_options": {side: cls.entity_options.model_json_schema()
                                   for side, cls in (("source", spec.source), ("sink", spec.sink)) if cls is not None},
            }))
        return
    table = Table(title="installed connectors", title_justify="left")
    for col in ("name", "source", "sink", "delta", "deletes", "description"):
        table.add_column(col)
    for spec in specs.values():
        caps = spec.capabilities
        table.add_row(spec.name, "yes" if spec.source else "-", "yes" if spec.sink else "-",
                      ",".join(d.value for d in caps.delta), "yes" if caps.supports_deletes else "-", spec.description)
    out.print(table)


@main.command()
@handled
def schema() -> None:
    """Print the JSON Schema of job files (with every installed connector's options), for editors and CI.

    Save it (`kanal schema > kanal-job.schema.json`) and start a job file
    with `# yaml-language-server: $schema=kanal-job.schema.json`.
    """
    from kanal.jobs.schema import job_schema

    click.echo(json.dumps(job_schema(), indent=2, ensure_ascii=False))


@main.group()
def connector() -> None:
    """Write your own connector: `kanal connector new NAME`."""


@connector.command("new")
@click.argument("name")
@click.option("--source", "source", is_flag=True, help="Generate a source (default: source and sink).")
@click.option("--sink", "sink", is_flag=True, help="Generate a sink (default: source and sink).")
@click.option("--dir", "parent", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder in which the package folder kanal-NAME is created.")
@handled
def connector_new(name: str, source: bool, sink: bool, parent: str) -> None:
    """Create a pip package for connector NAME: config, source and/or sink, a simulator, conformance tests.

    It installs and passes its tests as generated; then replace the
    simulated API's endpoints and fields with your system's.
    """
    created = scaffold.new_connector(name, Path(parent), source=source, sink=sink)
    out.print(f"created {created.folder}/ (connector {created.name!r}, package {created.package}):")
    for path in created.files:
        out.print(f"  {path.as_posix()}")
    out.print("next:")
    out.print(f"  cd {created.folder}")
    out.print(f"  pip install -e .    # registers the connector; `kanal connectors` lists {created.name}")
    out.print("  pytest              # the connector contract (kanal.testing) against the simulator")
    out.print(f"  then edit {created.package}/ for your system's API (guide: docs/connectors.md in Kanal)")


@main.group(invoke_without_command=True, context_settings={"allow_interspersed_args": True})
@JOB
@click.option("--store", required=True, help="The store's location code: the location of its movements (e.g. S1).")
@click.option("--journal", required=True, type=click.Path(file_okay=False),
              help="Folder of the store's durable journal and local ledger.")
@click.option("--port", type=click.IntRange(0, 65535), default=8600, show_default=True, help="Port of the HTTP API.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback only with --tls-cert/--tls-key or --insecure.")
@click.option("--drop", type=click.Path(file_okay=False), help="Also take .json/.csv movement files put in this folder.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="The certificate's private key (PEM).")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP beyond loopback (a network you trust).")
@click.option("--keep-days", type=click.FloatRange(min=0), default=14.0, show_default=True,
              help="Days the journal keeps movements after forwarding them (checked hourly).")
@click.pass_context
@handled
def edge(ctx: click.Context, job: str, store: str, journal: str, port: int, host: str, drop: str | None,
         tls_cert: str | None, tls_key: str | None, insecure: bool, keep_days: float) -> None:  # fmt: skip
    """The store agent: takes stock movements while offline, forwards them to Kafka when it can.

    POST /movements (a JSON array of stock_movements), GET /availability/SKU
    and GET /status, with a bearer token of KANAL_EDGE_TOKENS. See
    docs/edge.md. `... post FILE` journals files; `... status` shows the backlog.
    """
    import os

    from kanal.jobs import edge as edge_job
    from kanal.jobs import edge_agent, edge_http

    loaded = _load(job)
    ctx.obj = {"loaded": loaded, "store": store, "journal": Path(journal)}
    if ctx.invoked_subcommand:
        return
    options = edge_job.EdgeOptions(
        store, Path(journal), host, port, Path(drop) if drop else None, Path(tls_cert) if tls_cert else None,
        Path(tls_key) if tls_key else None, insecure, edge_http.parse_tokens(os.environ.get(edge_http.TOKENS_ENV)),
        keep_days,
    )  # fmt: skip
    with _graceful() as stop:
        edge_agent.run(loaded, options, stop, lambda url: _say(
            f"kanal edge: store {store} serves {url} (journal {journal}); Ctrl-C stops it", loaded.name))


@edge.command("post")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.pass_context
@handled
def edge_post(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Journal the movements of FILES (.json arrays or .csv); a running agent forwards them."""
    from kanal.jobs import edge as edge_job

    loaded, store, journal = ctx.obj["loaded"], ctx.obj["store"], ctx.obj["journal"]
    try:
        for path, taken in edge_job.post(loaded, store, journal, [Path(f) for f in files]):
            out.print(f"{path}: {taken.records} movement(s) journaled ({taken.new} new, {taken.duplicate} duplicate)")
    except edge_job.Malformed as exc:
        _error(exc.message)
        for problem in exc.problems[1:20]:
            err.print(f"  record {problem.index}: {problem.problem}")
        sys.exit(1)


@edge.command("status")
@click.pass_context
@handled
def edge_status(ctx: click.Context) -> None:
    """The journal's counts as JSON: movements journaled, and not forwarded yet (backlog)."""
    from kanal.jobs import edge as edge_job

    _json(edge_job.journal_status(ctx.obj["store"], ctx.obj["journal"]))


@main.command()
@click.option("--port", type=int, default=9092, show_default=True, help="Loopback port to listen on.")
@handled
def broker(port: int) -> None:
    """Run the embedded Kafka-compatible broker in the foreground (memory only)."""
    from kanal.core.embedded import EmbeddedBroker
    from kanal.core.errors import BrokerUnavailable

    stop = threading.Event()
    for stopping in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stopping, lambda signum, frame: stop.set())
    with EmbeddedBroker(port=port) as b:
        out.print(f"embedded broker listening on {b.bootstrap} (in memory; Ctrl-C stops it)")
        while not stop.wait(0.5):
            if not b.alive():
                raise BrokerUnavailable("embedded broker", f"stopped unexpectedly; it no longer serves {b.bootstrap}")


@main.command()
@click.option("--scale", type=float, default=1.0, show_default=True, help="Data volume factor (1.0 = 1.2M prices).")
@click.option("--folder", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Where the demo keeps its databases, job file and Parquet output.")
@click.option("--keep", is_flag=True, help="Keep the databases running afterwards and print commands to try on them.")
@click.option("--stop", is_flag=True, help="Stop the databases an earlier `kanal demo --keep` left running in --folder.")
@click.option("--inventory", "real_time", is_flag=True,
              help="The real-time inventory demo instead: store agents, the aggregator, Redis and a shop database.")
@click.option("--seconds", type=float, default=45.0, show_default=True, help="With --inventory: how long the tills sell.")
@handled
def demo(scale: float, folder: str, keep: bool, stop: bool, real_time: bool, seconds: float) -> None:
    """Create an ERP and a shop database, seed the ERP, migrate everything, then stream ERP changes.

    With --inventory: stores and a warehouse sell through their `kanal edge`
    agents while `kanal inventory` and `kanal sync` keep Redis and a shop
    database up to date; a store goes offline and comes back; the end checks
    that every figure equals the ledger of all movements (exit 1 if not).
    """
    from kanal.jobs import demo as demo_job

    if real_time and (keep or stop):
        raise click.UsageError("--keep and --stop belong to the migration demo; --inventory stops everything it started")
    if stop:
        for line in demo_job.stop(folder):
            out.print(line)
        return
    if real_time:
        from kanal.jobs import inventory_demo

        folder = "demo-inventory" if folder == "demo-output" else folder
        if not inventory_demo.run(folder, seconds, console=err, out=out).ok:
            raise SystemExit(1)
        return
    demo_job.run(folder, scale, console=err, out=out, present=_print_report, keep=keep)
