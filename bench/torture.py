"""Run torture sequences with new seeds until the time is up; every divergence is a bug to replay.

    .venv/bin/python bench/torture.py --minutes 10
    .venv/bin/python bench/torture.py --minutes 30 --features all        # also what is known to fail
    .venv/bin/python bench/torture.py --seed 1234 --count 1 --actions 5   # replay one sequence

Each sequence (see tests/torture/harness.py) drives the `kanal` CLI through
a hostile series of commands (kill -9 at random moments, SIGTERM, a sink
database restart, cleanup and migrate again) while an ERP keeps writing,
then catches up with `kanal run` and compares every sink with the source as
a multiset. Two throwaway PostgreSQL servers are started here: the ERP's
(wal_level=logical) and the shop's, which sequences stop and start.

Prints one line per sequence, then: sequences run, kills survived, rows
compared, divergences (each with its seed and the command that replays it).
Exit status: 0 when no sequence diverged, 1 otherwise, 2 when the setup failed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import pg  # noqa: E402
from tests.torture.harness import Result, Servers, run_sequence, stop_server  # noqa: E402
from tests.torture.scenario import ENABLED, FEATURES, describe_features, generate, parse_features  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="run new sequences until this much time has passed")
    parser.add_argument("--seed", type=int, help="first seed (the next ones follow it); default: from the clock")
    parser.add_argument("--count", type=int, help="stop after this many sequences")
    parser.add_argument(
        "--features",
        help=f"'all', 'none', or names, each +name/-name relative to the default ({','.join(sorted(ENABLED))}); "
        f"known: {','.join(FEATURES)}",
    )
    parser.add_argument("--actions", type=int, default=5, help="at most this many commands per sequence")
    parser.add_argument("--keep", action="store_true", help="keep the folders of sequences that did not diverge")
    args = parser.parse_args()
    try:
        features = parse_features(args.features)
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # stop the servers on the way out
    base = Path(tempfile.mkdtemp(prefix="kanal-torture-"))
    try:
        servers = _servers(base)
    except Exception as exc:  # noqa: BLE001 - report the setup failure, nothing else to do
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    print(f"torture: features {','.join(sorted(features)) or 'none'}; sequences in {base}", flush=True)
    results: list[Result] = []
    deadline = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < deadline and (args.count is None or len(results) < args.count):
            seed = first + len(results)
            scenario = generate(seed, features, args.actions)
            print(f"seed {seed}: {scenario.describe()}", flush=True)
            result = run_sequence(scenario, servers, base / f"seed-{seed}", keep=args.keep)
            results.append(result)
            verdict = "ok" if result.ok else f"DIVERGED ({len(result.divergences)})"
            print(f"seed {seed}: {verdict} in {result.seconds:.0f}s, {result.kills} kills, "
                  f"{result.rows_compared:,} rows compared", flush=True)
            if not result.ok:
                print(result.report(), flush=True)
    finally:
        stop_server(servers.sink)
        stop_server(servers.erp)
    return _summary(results, features, base, args.keep)


def _servers(base: Path) -> Servers:
    erp = pg.Server.start(base / "pg-erp")
    erp.configure(wal_level="logical", max_replication_slots="16", max_wal_senders="16")
    return Servers(erp, pg.Server.start(base / "pg-shop"))


def _summary(results: list[Result], features: frozenset[str], base: Path, keep: bool) -> int:
    diverged = [r for r in results if not r.ok]
    print()
    print(f"sequences run:     {len(results)}")
    print(f"kills survived:    {sum(r.kills for r in results if r.ok)}")
    print(f"rows compared:     {sum(r.rows_compared for r in results):,}")
    print(f"divergences:       {sum(len(r.divergences) for r in diverged)} in {len(diverged)} sequence(s)")
    names = describe_features(features)
    option = f" --features {names}" if names else ""
    for r in diverged:
        print(f"  seed {r.seed}: {r.divergences[0]}")
        print(f"    replay: .venv/bin/python bench/torture.py --seed {r.seed} --count 1 --actions {r.max_actions}{option}")
        print(f"    or:     {r.replay()}")
    if not diverged and not keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
