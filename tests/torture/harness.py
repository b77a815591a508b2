"""Runs one torture sequence against real systems and says how the sinks diverge from the source.

A sequence gets fresh databases (the ERP on a server with `wal_level =
logical`, the shop on a second server that can be stopped), a fresh job
folder, and drives Kanal only through its command line with the embedded
broker, as a user would. Then comes the catch-up the README promises for
`kanal run`: it "fixes the position, migrates unless a migration is done,
then streams from the position" (resuming an unfinished migration and the
stored position after a crash). So the final step is `kanal run` until every
sink equals the ERP (and, for CDC, until the slot has confirmed everything),
then SIGTERM, which must exit 0. After it: the sinks still equal the source;
refused rows, once the target takes them, are replayed from the dead letters
without undoing newer writes; every invalid ERP row is a dead letter; no
`kanal` process and no embedded broker is left; the only replication slot
is the job's own, inactive, and `kanal cleanup` removes it.

Along the way every command must exit 0 unless it was killed; `sync` may
refuse an unfinished migration (exit 2), as documented.

What the sequences stay clear of, because nothing promises it: deletes
while no slot exists (see `erp`), a `cleanup` with changes still in the
slot (it is drained first), rows moved between the chunks of a *resumed*
migration of a cursor job, cursor transactions open longer than the overlap.

Everything found is a divergence: a sentence naming what and where, never
an exception, so one sequence reports all it saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg

from tests import pg
from tests.torture import erp, sinks
from tests.torture.scenario import Scenario, Step, describe_features

KANAL = [sys.executable, "-m", "kanal"]
COMMAND_TIMEOUT_S = 180.0
CATCH_UP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 90.0
CONVERGED_POLL_S = 0.5
STUCK_S = 15.0


@dataclass
class Servers:
    """The ERP's server (logical decoding) and the shop's (stopped and started by sequences)."""

    erp: pg.Server
    sink: pg.Server


@dataclass
class Result:
    seed: int
    features: frozenset[str]
    max_actions: int
    scenario: str
    log: list[str] = field(default_factory=list)
    divergences: list[str] = field(default_factory=list)
    kills: int = 0
    rows_compared: int = 0
    seconds: float = 0.0
    folder: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.divergences

    def replay(self) -> str:
        return (f"KANAL_TORTURE_SEED={self.seed} KANAL_TORTURE_ACTIONS={self.max_actions}"
                f"{features_env(self.features)} .venv/bin/python -m pytest -q tests/torture")

    def report(self) -> str:
        lines = [f"torture seed {self.seed}: {self.scenario}", *(f"  {line}" for line in self.log)]
        lines += [f"  DIVERGENCE: {d}" for d in self.divergences]
        if self.folder is not None:
            lines.append(f"  job folder (logs of every command): {self.folder}")
        lines.append(f"  replay: {self.replay()}")
        return "\n".join(lines)


class Sequence:
    """One scenario, from fresh databases to the last check (see the module docstring)."""

    def __init__(self, scenario: Scenario, servers: Servers, folder: Path) -> None:
        self.s, self.servers = scenario, servers
        self.folder = folder
        self.result = Result(scenario.seed, scenario.features, scenario.max_actions, scenario.describe(), folder=folder)
        self.slot = "kanal_" + scenario.job.replace("-", "_")
        self.commands = 0
        self.reported: set[str] = set()
        self.constrained = False
        """Under `narrow_names` with a created table: the CHECK that refuses long names is in place."""
        self.widened = False
        """Under `narrow_names`: shop_products takes long names again (refused rows count from then on)."""
        self.migration_interrupted = False
        """A migration was left unfinished: the next `run`/`migrate` resumes it (see `_shuffler`)."""
        self.erp = self.shop = ""

    # the sequence --------------------------------------------------------------------------------

    def run(self) -> Result:
        started = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        self.erp = self.servers.erp.create_database(f"torture_erp_{tag}")
        self.shop = self.servers.sink.create_database(f"torture_shop_{tag}")
        # PYTHONFAULTHANDLER: a hung command killed by SIGABRT leaves every thread's stack in its .err file
        self.env = {**os.environ, "ERP_DSN": self.erp, "SHOP_DSN": self.shop, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"}
        self.writer = erp.Writer(self.s, self.erp, self._slot_exists)
        try:
            erp.create(self.s, self.erp)
            sinks.create_existing(self.s, self.erp, self.shop)
            (self.folder / "job.yaml").write_text(job_yaml(self.s, self.folder))
            for index, step in enumerate(self.s.steps, 1):
                self.writer.begin(index)
                self._step(step)
            self._catch_up()
            self._after()
        except Exception as exc:  # noqa: BLE001 - a harness failure is reported like a divergence, with the log
            self._diverged(f"harness error: {type(exc).__name__}: {exc}")
        finally:
            self._teardown()
            self.result.seconds = time.monotonic() - started
        return self.result

    def _step(self, step: Step) -> None:
        if step.action == "write":
            self.writer.write(step.writes)
            self._log(f"write {step.writes}: {_ops_summary(self.writer.done[-step.writes:])}")
            return
        if step.action == "cleanup":
            self._cleanup()
            return
        args = {"run": ["run", "job.yaml", "--quiet"], "migrate": ["migrate", "job.yaml", "--quiet"],
                "sync": ["sync", "job.yaml", "--once", "--quiet"]}[step.action]
        self._command(step, args)

    def _cleanup(self) -> None:
        """`sync --once` (nothing pending), then `kanal cleanup`: the slot and the position are gone.

        The stream is drained first because a delete still in the slot would
        be lost with it, and no later snapshot can know of a deleted row (the
        checker's writes delete nothing while no slot exists).
        """
        if self._migration_state() == "running":  # a stream refuses an unfinished migration: finish it first
            self._command(Step("migrate"), ["migrate", "job.yaml", "--quiet"])
        self._command(Step("sync"), ["sync", "job.yaml", "--once", "--quiet"])
        proc = self._kanal("cleanup", "job.yaml")
        self.migration_interrupted = False  # the next migration starts afresh
        self._log(f"cleanup -> rc {proc.returncode}")
        if proc.returncode != 0:
            self._diverged(f"`kanal cleanup` exited {proc.returncode}: {_tail(proc.stderr)}")
        if self._slot_exists():
            self._diverged(f"replication slot {self.slot} still exists after `kanal cleanup`")

    # commands --------------------------------------------------------------------------------------

    def _command(self, step: Step, args: list[str]) -> None:
        """Run one command with the step's concurrent writes and hostilities, then judge how it ended."""
        self.commands += 1
        name = f"{self.commands:02d}-{step.action}"
        ops_before = len(self.writer.done)
        started = time.monotonic()
        with (self.folder / f"{name}.out").open("w") as out, (self.folder / f"{name}.err").open("w") as err:
            proc = subprocess.Popen([*KANAL, *args], cwd=self.folder, env=self.env, stdout=out, stderr=err)
            tree = ProcessTree(proc.pid)
            stop_writing = threading.Event()
            helpers = [t for t in (self._concurrent_writer(step, stop_writing), self._shuffler(step, stop_writing)) if t]
            try:
                killed = self._drive(proc, step, tree, f"`kanal {' '.join(args)}`", name)
            finally:
                stop_writing.set()
                for thread in helpers:
                    thread.join(60)
        really_killed = killed and proc.returncode == -signal.SIGKILL
        self.result.kills += really_killed
        if step.action in ("run", "migrate") and self.s.moving_rows:
            self.migration_interrupted = self._migration_state() == "running"
        wrote = f", {len(self.writer.done) - ops_before} concurrent writes" if step.writes else ""
        self._log(f"{step.describe()} -> rc {proc.returncode} after {time.monotonic() - started:.1f}s"
                  f"{' (killed)' if really_killed else ''}{wrote}")
        error = _tail((self.folder / f"{name}.err").read_text())
        if step.action == "sync" and proc.returncode == 2 and "unfinished" in error and self._migration_state() == "running":
            self._log("  refused, as documented: the migration is unfinished")
        elif not really_killed and proc.returncode != 0:
            self._diverged(f"`kanal {' '.join(args)}` exited {proc.returncode}: {error}")
        self._no_leftovers(tree, f"`kanal {args[0]}`")
        self._refuse_long_names()

    def _drive(self, proc: subprocess.Popen[bytes], step: Step, tree: ProcessTree, what: str, name: str) -> bool:
        """Until the command ends: SIGKILL, SIGTERM, stop and start the sink server on the step's timeline.
        Returns whether SIGKILL was sent."""
        outage = SinkOutage(self.servers.sink, step.sink_down_s)
        started = time.monotonic()
        killed = termed = False
        deadline = COMMAND_TIMEOUT_S
        try:
            while (elapsed := time.monotonic() - started) <= deadline:
                tree.sample()
                outage.tick(elapsed, running=proc.poll() is None)
                if proc.poll() is not None:
                    return killed
                if step.kill_s is not None and elapsed >= step.kill_s and not killed:
                    proc.kill()
                    killed = True
                if step.action == "run" and elapsed >= step.run_s and not termed and not killed:
                    proc.send_signal(signal.SIGTERM)
                    termed, deadline = True, elapsed + STOP_TIMEOUT_S
                time.sleep(0.05)
            self._diverged(f"{what} still running after {deadline:.0f}s (hung); its threads' stacks are in {name}.err")
            abort(proc)
            return killed
        finally:
            outage.end()

    def _refuse_long_names(self) -> None:
        """Under `narrow_names` with a table Kanal created: once it exists, a CHECK refuses long names."""
        if not self.s.narrow_names or "products" in self.s.existing or self.constrained:
            return
        with psycopg.connect(self.shop, autocommit=True) as conn:
            if conn.execute("select to_regclass('shop_products')").fetchone()[0] is None:  # type: ignore[index]
                return
            conn.execute(f"alter table shop_products add constraint torture_name_width check (length(name) <= {erp.NARROW}) not valid")
        self.constrained = True
        self._log(f"  shop_products now refuses names longer than {erp.NARROW} (CHECK)")

    def _concurrent_writer(self, step: Step, stop: threading.Event) -> threading.Thread | None:
        if not step.writes:
            return None

        def write() -> None:
            try:
                self.writer.write(step.writes, stop, pace_s=0.05)
            except Exception as exc:  # noqa: BLE001 - reported with the sequence
                self._diverged(f"harness error in the concurrent ERP writer: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        return thread

    def _shuffler(self, step: Step, stop: threading.Event) -> threading.Thread | None:
        """Under `moving_rows`: rows move between chunks while this command's snapshot reads.

        Only where one consistent snapshot is promised: a migration that
        starts afresh and is not killed. A resumed one reads its remaining
        chunks at a later moment, and a row moved in between is documented
        to arrive only through a stream that sees the UPDATE (a cursor does
        not see these).
        """
        if not self.s.moving_rows or step.kill_s is not None or self.migration_interrupted:
            return None

        def move() -> None:
            try:
                erp.shuffle(self.s, self.erp, stop)
            except Exception as exc:  # noqa: BLE001 - reported with the sequence
                self._diverged(f"harness error in the row mover: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=move, daemon=True)
        thread.start()
        return thread

    def _kanal(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KANAL, *args], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout)

    def _no_leftovers(self, tree: ProcessTree, what: str) -> None:
        alive = tree.wait_gone(15)
        if alive:
            self._diverged(f"{what} left processes behind: {', '.join(alive)}")

    # the end ---------------------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """`kanal run` until every sink equals the source and the position is confirmed, then SIGTERM."""
        with (self.folder / "zz-catch-up.out").open("w") as out, (self.folder / "zz-catch-up.err").open("w") as err:
            started = time.time()
            proc = subprocess.Popen([*KANAL, "run", "job.yaml", "--quiet"], cwd=self.folder, env=self.env, stdout=out, stderr=err)
            tree = ProcessTree(proc.pid)
            diffs, waited = self._converge(proc, tree)
            if proc.poll() is None and not diffs:
                self._wait_streamed(proc, started)
                if self.s.cdc:
                    self._wait_confirmed(proc)
            tree.sample()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._diverged(f"`kanal run` (catch-up) did not stop within {STOP_TIMEOUT_S:.0f}s of SIGTERM; its "
                               "threads' stacks are in zz-catch-up.err")
                abort(proc)
        self._log(f"catch-up run -> rc {proc.returncode}, {'converged' if not diffs else 'NOT converged'} after {waited:.1f}s")
        if proc.returncode != 0:
            self._diverged(f"`kanal run` (catch-up) exited {proc.returncode}: {_tail((self.folder / 'zz-catch-up.err').read_text())}")
        self._report("after the catch-up `kanal run`", diffs)
        self._no_leftovers(tree, "`kanal run` (catch-up)")

    def _converge(self, proc: subprocess.Popen[bytes], tree: ProcessTree) -> tuple[list[str], float]:
        """Compare until the sinks equal the source; the differences left and the seconds it took.

        Gives up early when the differences stay the same for `STUCK_S`: the
        run has nothing left to deliver, so waiting longer only costs time.
        """
        started = changed = time.monotonic()
        diffs: list[str] = []
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S and proc.poll() is None:
            tree.sample()
            now = self.differences()
            if now != diffs:
                changed = time.monotonic()
            diffs = now
            if not diffs or time.monotonic() - changed > STUCK_S:
                break
            time.sleep(CONVERGED_POLL_S)
        if proc.poll() is not None:  # it ended by itself: whatever it left is final
            diffs = self.differences()
        return diffs, time.monotonic() - started

    def _wait_streamed(self, proc: subprocess.Popen[bytes], since: float) -> None:
        """The run confirmed a stream position after it started: it got past the migration, whatever the sinks held."""
        state = self.folder / ".kanal" / self.s.job / "state.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                confirmed = json.loads(state.read_text()).get("stream", {}).get("confirmed_at") or 0
            except (OSError, ValueError):
                confirmed = 0  # not written yet, or being replaced
            if confirmed >= since:
                return
            time.sleep(0.2)
        if proc.poll() is None:
            self._diverged("the catch-up `kanal run` confirmed no stream position within 60s of the sinks catching up")

    def _wait_confirmed(self, proc: subprocess.Popen[bytes]) -> None:
        """Everything delivered is confirmed: the slot moves past the WAL written so far (heartbeats when quiet)."""
        with psycopg.connect(self.erp, autocommit=True) as conn:
            target = conn.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                row = conn.execute(
                    "select confirmed_flush_lsn >= %s::pg_lsn from pg_replication_slots where slot_name = %s",
                    (target, self.slot),
                ).fetchone()
                if row and row[0]:
                    return
                time.sleep(0.2)
        self._diverged(f"slot {self.slot} did not confirm past {target} within 30s of the sinks catching up")

    def _after(self) -> None:
        self._report("after `kanal run` stopped", self.differences(count=True))
        if self.s.narrow_names:
            self._replay_refused()
        self._check_dead_letters()
        self._check_slots_then_cleanup()

    def _replay_refused(self) -> None:
        """Let shop_products take long names, replay the dead letters: targets equal the source, none left."""
        with psycopg.connect(self.shop, autocommit=True) as conn:
            if "products" in self.s.existing:
                conn.execute("alter table shop_products alter column name type text")
            else:
                conn.execute("alter table shop_products drop constraint if exists torture_name_width")
        self.widened = True
        proc = self._kanal("dlq", "job.yaml", "replay")
        self._log(f"shop_products takes long names now; dlq replay -> rc {proc.returncode}: {proc.stdout.strip()}")
        if proc.returncode not in (0, 1) or "Traceback" in proc.stderr:
            self._diverged(f"`kanal dlq replay` exited {proc.returncode}: {_tail(proc.stderr)}")
        self._report("after `kanal dlq replay`", self.differences())
        left = [e for e in self._dead_letters() if e.get("stage") == "sink"]
        if left:
            self._diverged(f"{len(left)} sink dead letter(s) left after replay into a wide column, e.g. {left[0]}")

    def _migration_state(self) -> str:
        """`never run`, `running` (unfinished) or `done`, as `kanal status` tells."""
        proc = self._kanal("status", "job.yaml", "--json")
        states = {json.loads(line)["migration"] for line in proc.stdout.splitlines() if line.startswith("{")}
        return states.pop() if len(states) == 1 else "running"

    def _dead_letters(self) -> list[dict]:
        proc = self._kanal("dlq", "job.yaml", "show", "--json")
        if proc.returncode != 0:
            self._diverged(f"`kanal dlq show --json` exited {proc.returncode}: {_tail(proc.stderr)}")
            return []
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def _check_dead_letters(self) -> None:
        """Every invalid ERP row is a dead letter (its current content); with `dlq_exactly_once`, once."""
        if not self.s.has("invalid_rows"):
            return
        letters = self._dead_letters()
        stored = Counter(
            sinks.canonical("prices", [e["record"].get(f) for f in erp.FIELDS["prices"]])
            for e in letters
            if e.get("entity") == "prices" and e.get("stage") == "source"
        )
        with psycopg.connect(self.erp) as conn:
            invalid = sinks.multiset("prices", erp.invalid_prices(conn))
        missing = [row for row in invalid if row not in stored]
        if missing:
            self._diverged(f"{len(missing)} invalid price(s) in the ERP are not in the dead letters, e.g. {missing[0]}")
        if self.s.has("dlq_exactly_once"):
            twice = Counter(json.dumps([e.get(k) for k in ("entity", "key", "stage", "sink", "record")], sort_keys=True)
                            for e in letters)
            repeated = [k for k, n in twice.items() if n > 1]
            if repeated:
                self._diverged(f"{len(repeated)} dead letter(s) stored more than once, e.g. {repeated[0]}")
        self._log(f"dead letters: {len(letters)} ({sum(invalid.values())} invalid ERP rows)")

    def _check_slots_then_cleanup(self) -> None:
        with psycopg.connect(self.erp, autocommit=True) as conn:
            def slots() -> list[tuple]:
                return conn.execute(
                    "select slot_name, active from pg_replication_slots where database = current_database()"
                ).fetchall()

            deadline = time.monotonic() + 15
            while any(active for _, active in slots()) and time.monotonic() < deadline:
                time.sleep(0.1)
            found = slots()
            expected = {self.slot} if self.s.cdc else set()
            if {name for name, _ in found} != expected or any(active for _, active in found):
                self._diverged(f"replication slots after the last command: {found} (expected {sorted(expected)}, inactive)")
            proc = self._kanal("cleanup", "job.yaml")
            if proc.returncode != 0:
                self._diverged(f"final `kanal cleanup` exited {proc.returncode}: {_tail(proc.stderr)}")
            if slots():
                self._diverged(f"replication slots after `kanal cleanup`: {slots()}")

    # comparing -------------------------------------------------------------------------------------

    def differences(self, count: bool = False) -> list[str]:
        """Per sink and entity, how the sink differs from the ERP (empty: equal).

        Until the refusing column is widened, products whose name it refuses
        are left out of shop_products' compare: they wait in the dead letters.
        """
        found = []
        with psycopg.connect(self.erp) as source:
            expected = {e: sinks.multiset(e, erp.source_rows(source, self.s, e)) for e in erp.FIELDS}
        with psycopg.connect(self.shop) as shop:
            for sink, entities in self.s.sinks.items():
                for entity in entities:
                    want = expected[entity]
                    if sink == "files":
                        got = sinks.read_files(self.folder / "out" / entity, entity)
                    else:
                        got, absent = sinks.read_table(shop, sinks.target_table(sink, entity), entity)
                        want = sinks.without(entity, want, absent)
                    if sink == "shop" and entity == "products" and self.s.narrow_names and not self.widened:
                        refused = {row[0] for row in want if row[1] is not None and len(row[1]) > erp.NARROW}
                        want, got = sinks.without_keys(want, refused), sinks.without_keys(got, refused)
                    if count:
                        self.result.rows_compared += sum(want.values())
                    if got != want:
                        found.append(_difference(sink, entity, want, got))
        return found

    # helpers ---------------------------------------------------------------------------------------

    def _slot_exists(self) -> bool:
        with psycopg.connect(self.erp, autocommit=True) as conn:
            row = conn.execute("select 1 from pg_replication_slots where slot_name = %s", (self.slot,)).fetchone()
        return row is not None

    def _log(self, line: str) -> None:
        self.result.log.append(line)

    def _diverged(self, what: str) -> None:
        self.result.divergences.append(what)

    def _report(self, when: str, differences: list[str]) -> None:
        """Record sink differences; one already reported at an earlier check is not repeated."""
        for d in differences:
            if d not in self.reported:
                self.reported.add(d)
                self._diverged(f"{when}: {d}")

    def _teardown(self) -> None:
        """Leave nothing on the shared servers: the job's slot, the databases."""
        for server, dsn in ((self.servers.erp, self.erp), (self.servers.sink, self.shop)):
            if not dsn:
                continue
            with contextlib.suppress(psycopg.Error), psycopg.connect(server.dsn(), autocommit=True) as conn:
                name = dsn.rsplit("/", 1)[-1].split("?", 1)[0]
                conn.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s "
                    "and not active", (name,)
                )
                conn.execute(f'drop database if exists "{name}" with (force)')


def abort(proc: subprocess.Popen[bytes]) -> None:
    """End a hung command so that it says where it hung: SIGABRT makes Python's fault handler print
    every thread's stack to stderr (the environment enables it); SIGKILL if that does not end it."""
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_server(server: pg.Server) -> None:
    """Stop a throwaway server for good: pgserver only stops the postmaster it started itself, and
    sequences (and `configure`) restart them."""
    server.stop()
    if (Path(server.handle.pgdata) / "postmaster.pid").exists():
        server.kill()


class SinkOutage:
    """Stops the sink's server `window[0]` seconds into a command (if it still runs), starts it `window[1]` later."""

    def __init__(self, server: pg.Server, window: tuple[float, float] | None) -> None:
        self.server, self.window = server, window
        self.down = self.over = False

    def tick(self, elapsed: float, running: bool) -> None:
        if self.window is None or self.over:
            return
        start, length = self.window
        if self.down and elapsed >= start + length:
            self.end()
        elif not self.down and running and elapsed >= start:
            self.server.kill()
            self.down = True

    def end(self) -> None:
        if self.down:
            self.server.restart()
        self.down, self.over = False, True


class ProcessTree:
    """The pids of a command and its children (the embedded broker), sampled while it runs.

    Children outlive a parent killed by SIGKILL unless they arrange not to,
    and are then re-parented out of reach: so they are recorded while the
    parent lives, and checked by (pid, start time) after it ended.
    """

    def __init__(self, pid: int) -> None:
        self.seen: dict[int, tuple[float, str]] = {}
        self.root = pid
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.root)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(p.pid, (p.create_time(), p.name()))

    def alive(self) -> list[str]:
        left = []
        for pid, (created, name) in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{name} (pid {pid})")
        return left

    def wait_gone(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


def job_yaml(s: Scenario, folder: Path) -> str:
    """The job file: every entity from its ERP table, each sink with its entities, policy dlq."""
    lines = [
        f"name: {s.job}",
        "kafka:",
        "  bootstrap_servers: embedded",
        "source:",
        "  connector: postgres",
        f'  config: {{dsn: "${{ERP_DSN}}", heartbeat_s: 1, delta_rows: {s.delta_rows}}}',
        "  entities:",
    ]
    for entity, kind in s.delta.items():
        delta = "cdc" if kind == "cdc" else f"{{cursor: updated_at, overlap_s: {erp.OVERLAP_S}, poll_s: 0.2}}"
        lines.append(f"    {entity}: {{table: {erp.table_of(s, entity)}, chunk_rows: {s.chunk_rows}, delta: {delta}}}")
    lines.append("sinks:")
    for sink, entities in s.sinks.items():
        if sink == "files":
            lines += [f"  - name: {sink}", "    connector: files", f"    config: {{path: {folder / 'out'}, format: parquet}}"]
        else:
            lines += [f"  - name: {sink}", "    connector: postgres", '    config: {dsn: "${SHOP_DSN}"}']
        lines.append("    entities:")
        for entity in entities:
            options = "{}" if sink == "files" else f"{{table: {sinks.target_table(sink, entity)}}}"
            lines.append(f"      {entity}: {options}")
    lines += ["errors:", "  policy: dlq", "  retry: {max_elapsed_s: 60}", ""]
    return "\n".join(lines)


def features_env(features: frozenset[str]) -> str:
    """` KANAL_TORTURE_FEATURES=...` for a replay command (nothing for the default set)."""
    text = describe_features(features)
    return f" KANAL_TORTURE_FEATURES={text}" if text else ""


def _difference(sink: str, entity: str, want: Counter, got: Counter) -> str:
    missing, extra = want - got, got - want
    parts = [f"{sink}/{entity}: {sum(got.values())} rows, source {sum(want.values())}"]
    if missing:
        parts.append(f"{sum(missing.values())} missing e.g. {sorted(missing, key=repr)[:2]}")
    if extra:
        parts.append(f"{sum(extra.values())} unexpected e.g. {sorted(extra, key=repr)[:2]}")
    return "; ".join(parts)


def _ops_summary(ops: list[str]) -> str:
    counts = Counter(op.split(" ", 2)[0] + " " + op.split(" ", 2)[1] for op in ops)
    return ", ".join(f"{n}x {what}" for what, n in sorted(counts.items()))


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def run_sequence(scenario: Scenario, servers: Servers, folder: Path, keep: bool = True) -> Result:
    """Run a scenario; remove its folder afterwards unless it diverged (or `keep`)."""
    result = Sequence(scenario, servers, folder).run()
    if result.ok and not keep:
        shutil.rmtree(folder, ignore_errors=True)
        result.folder = None
    return result
