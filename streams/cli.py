"""The ``tracewatch`` command line (SPEC §7).

Heavy imports (faust, kafka-python, redis) happen inside the subcommands that need them, so
``tracewatch check`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from streams.allocator import STARTED_AGAIN
from streams.compiled import stale_warning
from streams.reference import ReferenceError, rule_config
from streams.settings import Settings, SettingsError, load_settings, settings_help

if TYPE_CHECKING:
    import redis
    from tqdm import tqdm

Handler = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, str] = {}
    for name in ("catalog", "hoarding_overrides", "kafka", "redis_url"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = str(value)
    return load_settings(overrides=overrides)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """Rules over a log file, alerts on stdout."""
    from streams.offline import CheckFailed, default_jobs, exit_now, run_check

    path: Path = args.log
    if not path.is_file():
        print(f"tracewatch check: no such log file: {path}", file=sys.stderr)
        return 2
    config = rule_config(settings)
    exit_fast: bool = args.exit_fast
    jobs: int = args.jobs or default_jobs()
    # Only on a terminal: a bar in a redirected stderr would bury the bad-line reports.
    bar = None if args.no_progress or not sys.stderr.isatty() else _bytes_bar(path)

    def progress(done: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        with bar if bar is not None else nullcontext():
            stats = run_check(path, config, settings.psn_key_bytes, sys.stdout.buffer,
                              keep_ledger=exit_fast, jobs=jobs,
                              progress=None if bar is None else progress)
    except CheckFailed as error:
        sys.stdout.flush()
        print(f"tracewatch check: {error}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    summary = ", ".join(f"{rule} {count}" for rule, count in sorted(stats.alerts.items()))
    print(
        f"tracewatch check: {stats.messages} messages, {stats.bad} bad lines skipped, "
        f"{sum(stats.alerts.values())} alerts" + (f" ({summary})" if summary else ""),
        file=sys.stderr,
    )
    if exit_fast:
        exit_now(0)
    return 0


def _bytes_bar(path: Path) -> tqdm[NoReturn]:
    """A progress bar of the bytes of ``path`` read so far."""
    from tqdm import tqdm

    # No monitor thread: `check --jobs 2` forks, and a fork must not copy a thread that might
    # hold stderr's lock.
    tqdm.monitor_interval = 0
    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, file=sys.stderr,
                desc="check", mininterval=0.5, leave=False)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the faust worker (started again under jemalloc first, see streams.allocator)."""
    from streams import allocator

    try:
        allocator.ensure(settings.allocator)
    except allocator.AllocatorError as error:
        print(f"tracewatch worker: {error}", file=sys.stderr)
        return 2
    from streams.worker import run_worker

    return run_worker(settings)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Produce a log to the input topic."""
    from streams.kafka_io import replay

    stats = replay(
        args.log,
        settings.kafka,
        settings.topic_events,
        speed=args.speed,
        progress=not args.no_progress,
        limit=args.limit,
    )
    print(
        f"tracewatch replay: {stats.messages} messages to {settings.topic_events} "
        f"in {stats.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0 if not stats.errors else 1


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Write simulated traffic with labelled fraud."""
    from streams import simulate

    return simulate.run(args)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Precision and recall of the alerts against labels."""
    from streams.evaluate import run_evaluate

    return run_evaluate(args, settings)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The main job end to end on embedded defaults."""
    from streams.demo import run_demo

    return run_demo(args, settings)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """The benchmark of issue 5."""
    from streams.bench import run_bench

    return run_bench(args, settings)


def _business_time(text: str) -> int:
    """``--now``: a business time ``YYYY-MM-DD[ HH:MM:SS]`` (China time, as in the messages)."""
    from detectors.messages import BadInput, parse_time

    try:
        return parse_time(text.strip(), "--now")
    except BadInput as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, not {text!r}")
        return value

    return convert


def _size(count: int) -> str:
    """Bytes for people: 812 B, 24.6 kB, 310.2 MB, 1.4 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} B"


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    """Remove ledger entries older than the retention from Redis."""
    import redis

    from streams.redis_ledger import _redact

    where = _redact(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5,
                                  socket_timeout=60)
    try:
        return _sweep(args, settings, client, where)
    finally:
        client.close()


def _sweep(args: argparse.Namespace, settings: Settings, client: redis.Redis,
           where: str) -> int:
    """``tracewatch sweep`` on an open (not yet checked) client of ``where``."""
    import time

    import redis
    from tqdm import tqdm

    from streams.redis_ledger import (
        DEFAULT_PERSON_TTL_DAYS,
        KEY_META,
        SWEEP_BATCH,
        LedgerError,
        RedisLedger,
        SweepCount,
    )

    try:
        client.ping()
        meta = KEY_META.format(prefix=settings.key_prefix)
        if not client.exists(meta):  # RedisLedger() would create an empty ledger here
            print(f"tracewatch sweep: no tracewatch ledger with key prefix "
                  f"{settings.key_prefix!r} at {where} ({meta} is missing); "
                  "check TRACEWATCH_REDIS_URL and TRACEWATCH_KEY_PREFIX",
                  file=sys.stderr)
            return 2
        ledger = RedisLedger(client, prefix=settings.key_prefix,
                             retention_days=settings.retention_days,
                             dedupe_days=settings.dedupe_days,
                             person_ttl_days=args.person_days or DEFAULT_PERSON_TTL_DAYS)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        print(f"tracewatch sweep: cannot reach Redis at {where} ({error}); start redis-server "
              "or set TRACEWATCH_REDIS_URL (or --redis-url)", file=sys.stderr)
        return 2
    except (LedgerError, redis.RedisError) as error:
        print(f"tracewatch sweep: {error}", file=sys.stderr)
        return 2

    bar = tqdm(total=0, unit="bucket", file=sys.stderr,
               disable=args.no_progress, desc="sweep" + (" (dry run)" if args.dry_run else ""))

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = ledger.sweep(args.now, grace_days=args.grace_days, dry_run=args.dry_run,
                              batch=args.batch or SWEEP_BATCH, progress=progress)
    except redis.RedisError as error:
        print(f"tracewatch sweep: stopped after {bar.n:,} buckets: {error}; what was removed "
              "stays removed, and running the sweep again is safe", file=sys.stderr)
        return 1
    finally:
        bar.close()

    def line(count: SweepCount) -> str:
        cutoff = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(count.cutoff))
        verb = "would be removed" if result.dry_run else "removed"
        text = (f"  {count.family}: {count.entries:,} entries in {count.present:,} of "
                f"{count.buckets:,} buckets; {count.removed:,} older than {cutoff} "
                f"{verb}")
        if not result.dry_run and count.removed:
            text += f" ({_size(count.freed)} freed)"
        if count.unreadable:
            text += f"; {count.unreadable:,} entries without a readable time kept"
        return text

    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(result.now))
    mode = "dry run, nothing removed" if result.dry_run else "done"
    print(f"tracewatch sweep: {settings.key_prefix!r} at {where}, now {now} (business time), "
          f"{mode} in {result.seconds:.1f} s", file=sys.stderr)
    for count in result.families:
        print(line(count), file=sys.stderr)
    return 0


class _VersionAction(argparse.Action):
    """``--version``, worked out only when asked (importlib.metadata costs every start ~40 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and whether the hot path runs compiled, then exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from streams.compiled import hot_path_kind

        try:
            number = version("tracewatch")
        except PackageNotFoundError:
            number = "(not installed)"
        print(f"tracewatch {number}, hot path {hot_path_kind()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tracewatch",
        description="Real-time monitor of drug traceability codes (药品追溯码) for "
        "medical-insurance supervisors.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=settings_help(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    check = add("check", cmd_check, "run the rules over a log of NHSA messages; alerts on stdout")
    check.add_argument("log", type=Path, help="event log, one JSON message per line")
    check.add_argument("--catalog", type=Path, help="catalog CSV (default: TRACEWATCH_CATALOG)")
    check.add_argument("--hoarding-overrides", type=Path, help="per-drug HOARDING thresholds CSV")
    check.add_argument("--no-progress", action="store_true",
                       help="no progress bar (there is none when stderr is not a terminal)")
    check.add_argument(
        "--jobs", type=int, choices=(1, 2), default=None,
        help="2: a second process reads and validates the log while this one applies the "
             "rules (same output); default 2 where two cores are free, else 1",
    )

    worker = add("worker", cmd_worker, "run the Kafka worker (faust): events in, alerts out")
    worker.add_argument("--catalog", type=Path, help="catalog CSV (default: TRACEWATCH_CATALOG)")
    worker.add_argument("--hoarding-overrides", type=Path, help="per-drug HOARDING thresholds")

    replay = add("replay", cmd_replay, "produce a log to the input topic with kafka-python")
    replay.add_argument("log", type=Path, help="event log, one JSON message per line")
    replay.add_argument("--speed", type=float, default=None,
                        help="N× the log's own pace (by inf_time); default: as fast as possible")
    replay.add_argument("--limit", type=int, default=None, help="stop after N lines")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")

    simulate_parser = add("simulate", cmd_simulate,
                          "write simulated traffic with labelled fraud and its catalog")
    from streams import simulate

    simulate.add_arguments(simulate_parser)

    evaluate = add("evaluate", cmd_evaluate, "precision and recall of alerts against labels")
    evaluate.add_argument("log", type=Path, help="event log")
    evaluate.add_argument("labels", type=Path, help="labels.jsonl from tracewatch simulate")
    evaluate.add_argument("--catalog", type=Path, help="catalog CSV")
    evaluate.add_argument("--alerts", type=Path, help="alerts JSON lines to judge "
                          "(default: run check on the log)")
    evaluate.add_argument("--min", type=float, default=0.999,
                          help="exit non-zero when precision or recall is under this")
    evaluate.add_argument("--show", type=int, default=10, help="misses and false alarms to list")

    sweep = add("sweep", cmd_sweep,
                "remove code states, person states and sale index entries older than the "
                "retention from the Redis ledger")
    sweep.add_argument("--now", type=_business_time, default=None,
                       help="business time (China) the retention counts back from, "
                       "'YYYY-MM-DD HH:MM:SS'; default: now by Redis's clock")
    sweep.add_argument("--dry-run", action="store_true",
                       help="count what would be removed; remove nothing")
    sweep.add_argument("--grace-days", type=_count(0), default=1,
                       help="keep entries this many days past the retention, for late "
                       "messages and replays (default 1)")
    sweep.add_argument("--person-days", type=_count(1), default=None,
                       help="days a person's hoarding state is kept after its last purchase "
                       "or alert (default: 400, as the worker)")
    sweep.add_argument("--batch", type=_count(1), default=None,
                       help="buckets per Redis script call (default 64)")
    sweep.add_argument("--redis-url", help="Redis URL (default: TRACEWATCH_REDIS_URL)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = add("demo", cmd_demo, "the main job end to end: embedded broker, worker, a simulated "
               "day replayed, alerts printed")
    demo.add_argument("--days", type=int, default=1, help="simulated days")
    demo.add_argument("--seed", type=int, default=7, help="simulation seed")
    demo.add_argument("--institutions", type=int, default=60, help="simulated institutions")
    demo.add_argument("--people", type=int, default=5000, help="simulated insured people")
    demo.add_argument("--out", type=Path, default=Path("demo-out"),
                      help="folder for the simulated log and the alerts")
    demo.add_argument("--timeout", type=float, default=300, help="give up after this many s")
    demo.add_argument("--keep-ledger", action="store_true",
                      help="leave the run's Redis keys (twdemo<time>:*) instead of removing them")

    bench = add("bench", cmd_bench, "tracewatch's worker against a Quix Streams app and a naive "
                "faust app on one broker: codes/s, latency, Redis bytes per code")
    from streams.bench import add_arguments as bench_arguments

    bench_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None, exit_fast: bool = False) -> int:
    """Entry point of the ``tracewatch`` command.

    ``exit_fast``: a command that is done may end the process at once, skipping the teardown
    of what it allocated (``check``); only for the console script, never in-process callers.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.exit_fast = exit_fast
    stale = stale_warning()
    # A worker started again under jemalloc (streams.allocator) warned before it was.
    if stale and STARTED_AGAIN not in os.environ:
        print(f"tracewatch: warning: {stale}", file=sys.stderr)
    try:
        settings = _settings(args)
        handler: Handler = args.handler
        return handler(args, settings)
    except (SettingsError, ReferenceError) as error:
        print(f"tracewatch {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tracewatch check … | head`): stop quietly, as Unix tools do.
        # stdout is pointed at /dev/null so the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def run() -> None:
    """The console script ``tracewatch``."""
    sys.exit(main(exit_fast=True))


if __name__ == "__main__":
    run()
