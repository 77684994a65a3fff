"""``learn-features``: the command line for the LEARN pipeline.

Every pipeline subcommand takes ``--config FILE.toml`` plus ``--set section.key=value``
overrides (and shortcuts for the common ones). Exit codes: 0 success, 2 bad input or
configuration (the message names the file, row or field), 130 interrupted; anything else is
a bug and keeps its traceback. Heavy imports (torch, transformers, feast) happen inside the
commands so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from learn_features import __version__
from learn_features.errors import LearnFeaturesError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _pipeline_config(args: argparse.Namespace):
    from learn_features.config import load_config
    from training.config import PipelineConfig

    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    if args.device:
        overrides += [f"train.device={json.dumps(args.device)}", f"llm.device={json.dumps(args.device)}",
                      f"text_encoder.device={json.dumps(args.device)}"]
    if getattr(args, "shard", None):
        overrides += [f"llm.shard={json.dumps(args.shard)}", f"text_encoder.shard={json.dumps(args.shard)}"]
    if getattr(args, "seeds", None):
        overrides.append(f"eval.seeds={args.seeds}")
    return load_config(PipelineConfig, args.config, overrides)


def _prepared(args: argparse.Namespace):
    from training import pipeline

    prep = pipeline.prepare(_pipeline_config(args))
    if not args.quiet:
        print(f"data: {json.dumps(prep.dataset.report.__dict__)}\nsplit: {json.dumps(prep.split.summary())}", file=sys.stderr)
    return pipeline, prep


def cmd_extract(args: argparse.Namespace) -> int:
    pipeline, prep = _prepared(args)
    # os.environ: under torchrun without --shard, each rank embeds the shard RANK/WORLD_SIZE.
    for content, result in pipeline.extract(prep, progress=not args.quiet, env=os.environ).items():
        print(f"{content}: {result}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    pipeline, prep = _prepared(args)
    for name, result in pipeline.train(prep, args.method, progress=not args.quiet).items():
        print(f"{name}: best epoch {result.best_epoch}, validation {prep.config.train.select_metric} {result.best_score:.4f} -> {result.best_checkpoint}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    pipeline, prep = _prepared(args)
    for entity, path in pipeline.embed(prep).items():
        print(f"{entity} embeddings: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    pipeline, prep = _prepared(args)
    on = "validation" if args.validation else "test"
    pipeline.evaluate(prep, progress=not args.quiet, on=on)
    print(prep.run.metrics_md(on).read_text(encoding="utf-8"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    pipeline, prep = _prepared(args)
    pipeline.require_unsharded(prep.config)
    progress = not args.quiet
    pipeline.extract(prep, progress)
    pipeline.train(prep, progress=progress)
    pipeline.embed(prep)
    pipeline.evaluate(prep, progress)
    print(prep.run.metrics_md().read_text(encoding="utf-8"))
    print(f"outputs in {prep.run_dir}", file=sys.stderr)
    return 0


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="TOML config file (see training/configs/)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=1e-3 (repeatable)")
    parser.add_argument("--run-dir", help="output directory (config: run_dir)")
    parser.add_argument("--device", help="auto, cpu or cuda[:N] for every model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or data summary")


def _snapshot_time(value: str, prep, flag: str):
    """``now``, ``as-of`` (the run's data cut, from its manifest), ``end`` (just after the data's
    last event) or an ISO-8601 time (naive means UTC)."""
    import pandas as pd

    from learn_features.data.split import parse_time

    if value == "now":
        return pd.Timestamp.now(tz="UTC").floor("us")
    if value == "as-of":
        return parse_time(str(prep.run.read_manifest(required=("as_of",))["as_of"]), f"{flag} as-of")
    if value == "end":
        time = prep.dataset.interactions["timestamp"].max() + pd.Timedelta(seconds=1)
    else:
        time = parse_time(value, flag)
    if time > pd.Timestamp.now(tz="UTC"):
        # A vector stamped in the future would be served before the events it claims to know.
        raise LearnFeaturesError(f"{flag} {value}: {time.isoformat()} is in the future; snapshot times must not be later than now")
    return time


def _snapshot_rows(args: argparse.Namespace, prep, history_len: int):
    """The (user, time) rows to embed: one time (--as-of), a schedule (--every 7d), or a row
    after each of a user's events (--every event)."""
    import pandas as pd

    from learn_features.user_vectors import after_each_event, schedule, snapshot_histories

    events = prep.dataset.interactions
    if args.as_of and (args.start or args.stop or args.every):
        raise LearnFeaturesError("embed-users: give --as-of T, or --from A --to B --every INTERVAL, not both")
    if args.as_of:
        return snapshot_histories(events, [_snapshot_time(args.as_of, prep, "--as-of")], history_len, not args.all_users)
    if not (args.start and args.stop and args.every):
        raise LearnFeaturesError("embed-users: give --as-of T, or all of --from A --to B --every INTERVAL (e.g. 7d, or event)")
    start, stop = _snapshot_time(args.start, prep, "--from"), _snapshot_time(args.stop, prep, "--to")
    if args.every == "event":
        return after_each_event(events, start, stop, history_len)
    try:
        every = pd.Timedelta(args.every)
    except ValueError:
        raise LearnFeaturesError(f"--every {args.every!r} is not an interval like 1d, 12h or 7d, nor 'event'") from None
    return snapshot_histories(events, schedule(start, stop, every), history_len, not args.all_users)


def cmd_embed_users(args: argparse.Namespace) -> int:
    from learn_features.store.user_snapshots import embed_user_snapshots

    _, prep = _prepared(args)
    repos = list(args.repo or []) + ([prep.run.feast_replay] if args.replay else [])
    if not repos and args.output is None:
        raise LearnFeaturesError("embed-users: nothing to do; pass --repo, --replay and/or --output")
    rows = _snapshot_rows(args, prep, prep.config.split.history_len)
    result = embed_user_snapshots(prep.run_dir, rows, repos, args.output, prep.config.train.device, not args.quiet)
    print(f"{result.rows} user vectors of {result.users} users at {result.snapshots} snapshot time(s), model {result.model_version}; "
          f"{result.seconds_per_1000_users:.2f} s of tower time per 1,000 user vectors")
    if result.unknown_events:
        print(f"note: {result.unknown_events} event(s) on items outside the run's catalog were left out of histories "
              f"(e.g. {result.unknown_examples})", file=sys.stderr)
    for repo, published in result.published:
        if published.publication is None:
            print(f"{repo}: nothing new ({published.unchanged} vectors already in effect)")
        else:
            print(f"{repo}: published {published.published} vectors as {published.publication.publication_id} "
                  f"({published.unchanged} already in effect)")
    return 0


def cmd_stream_users(args: argparse.Namespace) -> int:
    from learn_features.data.tables import read_table
    from learn_features.store.stream import UserStream, validate_events

    if not args.bootstrap and args.events is None:
        raise LearnFeaturesError("stream-users: nothing to do; pass --events FILE and/or --bootstrap")
    # The new events are checked before anything is opened or created (the history table included).
    events = None if args.events is None else validate_events(read_table(args.events), str(args.events))
    config = _pipeline_config(args)
    stream = UserStream(config.run_dir, args.repo, args.feature_store_yaml, config.train.device)
    if args.bootstrap:
        _, prep = _prepared(args)
        until = _snapshot_time(args.until, prep, "--until")
        past = prep.dataset.interactions[prep.dataset.interactions["timestamp"] < until]
        touched = stream.bootstrap(past, str(prep.config.data.interactions or prep.config.data.movielens_dir))
        print(f"history table {stream.histories.path}: {touched} users seeded with their events before {until.isoformat()}")
    if events is not None:
        result = stream.ingest(events, str(args.events))
        when = result.pushed_at.isoformat() if result.pushed_at is not None else "-"
        print(f"pushed {len(result.user_ids)} user vectors online at {when}" + (f"; recorded as {result.publication.publication_id}" if result.publication else ""))
        if result.unknown_events:
            print(f"note: {result.unknown_events} event(s) on items outside the run's catalog were left out (e.g. {result.unknown_examples})", file=sys.stderr)
        if result.without_history:
            print(f"note: {len(result.without_history)} user(s) have no usable event yet, so no vector: {result.without_history[:5]}", file=sys.stderr)
    return 0


PIPELINE_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "extract": (cmd_extract, "embed item texts with the frozen LLM (and the text-encoder baseline), cached"),
    "train": (cmd_train, "train the PCH twin towers for each configured method"),
    "embed": (cmd_embed, "write LEARN user and item embeddings as Parquet"),
    "evaluate": (cmd_evaluate, "retrieval metrics of all methods on held-out users: metrics.json and metrics.md"),
    "run": (cmd_run, "extract, train, embed and evaluate in one go"),
    "embed-users": (cmd_embed_users, "user vectors as of a time or a schedule of times, from each user's history then"),
    "stream-users": (cmd_stream_users, "new events -> the affected users' vectors recomputed and pushed online at once"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learn-features",
        description="LEARN: LLM content embeddings aligned to recommendation, delivered as Feast features.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text) in PIPELINE_COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        _add_pipeline_options(sub)
        if name == "train":
            sub.add_argument("--method", action="append", help="train only this method (repeatable); default: all in eval.methods")
        if name == "evaluate":
            sub.add_argument(
                "--validation", action="store_true",
                help="score the validation users instead (metrics-validation.*): compare settings here, never on the test table",
            )
        if name in ("train", "evaluate", "run"):
            sub.add_argument("--seeds", type=int, metavar="N", help="train every trained method with N seeds and report mean ± SD (config: eval.seeds)")
        if name == "embed-users":
            times = sub.add_argument_group("snapshot times: now, as-of (the run's data cut), end (after the last event) or ISO-8601")
            times.add_argument("--as-of", metavar="T", help="one snapshot at T")
            times.add_argument("--from", dest="start", metavar="A", help="first snapshot of a schedule")
            times.add_argument("--to", dest="stop", metavar="B", help="last snapshot of a schedule (included)")
            times.add_argument("--every", metavar="INTERVAL", help="schedule step, e.g. 1d, 12h, 7d; or 'event': a row 1 µs after each of a user's events")
            sub.add_argument("--repo", action="append", type=Path, help="publish into this Feast repo (repeatable); its active version must be the run's")
            sub.add_argument("--replay", action="store_true", help="publish into the run's replay repo (<run-dir>/feast_replay)")
            sub.add_argument("--output", type=Path, help="also write the rows to <OUTPUT>/user_snapshots.parquet")
            sub.add_argument("--all-users", action="store_true", help="a row for every user at every snapshot (default: only users whose history changed)")
        if name == "stream-users":
            sub.add_argument("--repo", type=Path, default=Path("feature_repo"), help="Feast repo whose online store serves the vectors (default: feature_repo)")
            sub.add_argument("-f", "--feature-store-yaml", help="feature_store YAML inside the repo (default: feature_store.yaml)")
            sub.add_argument("--events", type=Path, help="CSV or Parquet with user_id, item_id, timestamp: the new events")
            sub.add_argument("--bootstrap", action="store_true", help="first seed the repo's history table with the job's own events (--config) before --until")
            sub.add_argument("--until", default="as-of", help="bootstrap with events before this time (default: as-of, the run's data cut)")
        if name == "extract":
            sub.add_argument(
                "--shard",
                metavar="I/N",
                help="embed only shard I of N (0-based) into the shared cache, for one of N GPUs or nodes; "
                "default under torchrun: RANK/WORLD_SIZE (config: llm.shard, text_encoder.shard)",
            )
        sub.set_defaults(func=func)
    # The delivery (Feast) and ranking-report commands live next to their code.
    from learn_features.store import cli as store_cli
    from ranking import cli as ranking_cli

    store_cli.register(subparsers)
    ranking_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LearnFeaturesError as exc:
        print(f"learn-features: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("learn-features: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
