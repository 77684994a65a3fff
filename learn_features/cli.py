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
    pipeline.evaluate(prep, progress=not args.quiet)
    print((prep.run_dir / "metrics.md").read_text(encoding="utf-8"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    pipeline, prep = _prepared(args)
    pipeline.require_unsharded(prep.config)
    progress = not args.quiet
    pipeline.extract(prep, progress)
    pipeline.train(prep, progress=progress)
    pipeline.embed(prep)
    pipeline.evaluate(prep, progress)
    print((prep.run_dir / "metrics.md").read_text(encoding="utf-8"))
    print(f"outputs in {prep.run_dir}", file=sys.stderr)
    return 0


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="TOML config file (see training/configs/)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=1e-3 (repeatable)")
    parser.add_argument("--run-dir", help="output directory (config: run_dir)")
    parser.add_argument("--device", help="auto, cpu or cuda[:N] for every model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or data summary")


PIPELINE_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "extract": (cmd_extract, "embed item texts with the frozen LLM (and the text-encoder baseline), cached"),
    "train": (cmd_train, "train the PCH twin towers for each configured method"),
    "embed": (cmd_embed, "write LEARN user and item embeddings as Parquet"),
    "evaluate": (cmd_evaluate, "retrieval metrics of all methods on held-out users: metrics.json and metrics.md"),
    "run": (cmd_run, "extract, train, embed and evaluate in one go"),
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
