"""The ``tracewatch`` command line (SPEC §7).

Heavy imports (faust, kafka-python, redis) happen inside the subcommands that need them, so
``tracewatch check`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from streams.reference import ReferenceError, rule_config
from streams.settings import Settings, SettingsError, load_settings, settings_help

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
    from streams.offline import run_check

    path: Path = args.log
    if not path.is_file():
        print(f"tracewatch check: no such log file: {path}", file=sys.stderr)
        return 2
    config = rule_config(settings)
    stats = run_check(path, config, settings.psn_key_bytes, sys.stdout.buffer)
    sys.stdout.flush()
    summary = ", ".join(f"{rule} {count}" for rule, count in sorted(stats.alerts.items()))
    print(
        f"tracewatch check: {stats.messages} messages, {stats.bad} bad lines skipped, "
        f"{sum(stats.alerts.values())} alerts" + (f" ({summary})" if summary else ""),
        file=sys.stderr,
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the faust worker."""
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tracewatch",
        description="Real-time monitor of drug traceability codes (药品追溯码) for "
        "medical-insurance supervisors.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    demo = add("demo", cmd_demo, "the main job end to end: embedded broker, worker, a simulated "
               "day replayed, alerts printed")
    demo.add_argument("--days", type=int, default=1, help="simulated days")
    demo.add_argument("--seed", type=int, default=7, help="simulation seed")
    demo.add_argument("--institutions", type=int, default=60, help="simulated institutions")
    demo.add_argument("--people", type=int, default=5000, help="simulated insured people")
    demo.add_argument("--out", type=Path, default=Path("demo-out"),
                      help="folder for the simulated log and the alerts")
    demo.add_argument("--timeout", type=float, default=300, help="give up after this many s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tracewatch`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        handler: Handler = args.handler
        return handler(args, settings)
    except (SettingsError, ReferenceError) as error:
        print(f"tracewatch {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
