"""Multi-GPU / multi-node PCH training: torchrun + DistributedDataParallel.

    learn-features extract --config job.toml                     # content first (see docs/scale-out.md)
    torchrun --nproc_per_node=8 -m training.distributed --config job.toml
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m training.distributed --config job.toml --set train.batch_size=4096 --method learn_v1
    learn-features embed --config job.toml && learn-features evaluate --config job.toml

Every rank runs the pipeline's ``train`` stage; ``training.trainer`` sees the process group
and trains data-parallel. ``train.batch_size`` is the *global* batch: each rank takes its
share, and the InfoNCE negatives are gathered from all ranks, so a run on N GPUs computes
the same loss and gradients as one process with the whole batch. Rank 0 builds the content
stores before the others open them, validates, and writes the checkpoints; a run is
resumable across a change of GPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from learn_features.config import load_config
from learn_features.errors import LearnFeaturesError
from training import pipeline
from training.collectives import World
from training.config import PipelineConfig

RANK_DEVICES = ("auto", "cuda", "cpu")  # each rank's GPU comes from LOCAL_RANK, never from the config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun ... -m training.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="pipeline TOML (the same file as for learn-features)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--method", action="append", help="train only this method (repeatable); default: all in eval.methods")
    parser.add_argument("--run-dir", help="override run_dir")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--timeout-minutes", type=float, default=60.0,
        help="collective timeout; the other ranks wait this long while rank 0 validates (default 60)",
    )
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.set) + ([f"run_dir={json.dumps(args.run_dir)}"] if args.run_dir else [])
    config = load_config(PipelineConfig, args.config, overrides)
    if config.train.device not in RANK_DEVICES:
        raise LearnFeaturesError(f"train.device must be one of {RANK_DEVICES} under torchrun (LOCAL_RANK picks each rank's GPU), got {config.train.device!r}")
    return config


def init_process_group(device: str, timeout: timedelta) -> None:
    """NCCL with one GPU per rank (LOCAL_RANK), or gloo on CPU."""
    if "RANK" not in os.environ:
        raise LearnFeaturesError("training.distributed must be started by torchrun (RANK is not set); for one process use `learn-features train`")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= gpus:  # NCCL takes one GPU per rank; CUDA alone would say only "invalid device ordinal"
            raise LearnFeaturesError(
                f"local rank {local_rank} has no GPU of its own: this node has {gpus}; start at most {gpus} "
                "processes per node (torchrun --nproc-per-node), or set train.device=cpu for gloo"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)


def run(config: PipelineConfig, methods: list[str] | None, quiet: bool) -> None:
    world = World.current()
    prep = pipeline.prepare(config)
    results = pipeline.train(prep, methods, progress=not quiet and world.rank == 0)
    if world.rank == 0:
        for name, result in results.items():
            print(f"{name}: best epoch {result.best_epoch}, validation {config.train.select_metric} {result.best_score:.4f} -> {result.best_checkpoint} ({world.size} ranks)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load(args)
        init_process_group(config.train.device, timedelta(minutes=args.timeout_minutes))
        try:
            run(config, args.method, args.quiet)
        finally:
            dist.destroy_process_group()
    except LearnFeaturesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
