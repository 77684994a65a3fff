"""Training steps on RecBole-style prefix batches: padded to the longest prefix (the implementation
before) against grouped by length (``PCH.encode_by_length``), in one run.

    .venv/bin/python bench/prefix_batches.py                       # Amazon Scientific, id_baseline and learn_hybrid
    .venv/bin/python bench/prefix_batches.py --steps 2 --batch-size 128 --methods id_baseline   # a smoke test

``train.objective = "prefixes"`` makes every (history, next event) pair its own sample, so a
batch of 2,048 mixes one-event prefixes with 50-event ones, and padded to its longest it
spends most of its transformer work on padding. Both ways run the trainer's own code
(``train_job``, ``build_parts``, ``sample_epoch``, ``host_batches``, ``train_step``) on the
first batches of epoch 0 of the real split of the given config, with that config's towers and
training settings per method: "padded" empties ``LENGTH_GROUPED_OBJECTIVES`` for its run, which
is what every prefixes run did before it existed. Content towers read random vectors of the
shipped LLM's width (576) with the split's ID slots, since speed does not depend on what the
vectors mean; no extraction is needed. Both runs start from the same seed, so their losses
after the same steps should be close (the dropout draws differ) and are printed to show it.
Both count positions from the start (``model.positions``): the padded pass hands the towers no
lengths to count from the end with, and which position row a slot reads costs the same.

On a CPU the towers run single-threaded by default (``--threads``), as ``train.workers``
trains them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learn_features.config import load_config  # noqa: E402
from learn_features.pch.inputs import ItemInputs  # noqa: E402
from learn_features.pch.model import length_group_widths  # noqa: E402
from training import trainer  # noqa: E402
from training.collectives import World  # noqa: E402
from training.config import PipelineConfig  # noqa: E402
from training.methods import get_methods  # noqa: E402
from training.pipeline import prepare, train_job  # noqa: E402

CONTENT_DIM = 576  # SmolLM2-135M's hidden size, the shipped LLM's
MODES = {"padded": (), "grouped": trainer.LENGTH_GROUPED_OBJECTIVES}


@dataclass
class Timing:
    seconds_per_step: float
    loss: float  # mean loss over the timed steps
    slots: int  # history positions the transformer ran over, padding included


def item_inputs(split, method: str) -> ItemInputs:
    """The method's inputs for the split's items: its ID slots, with random content for content towers."""
    ids = ItemInputs.from_training_items(len(split.item_ids), np.flatnonzero(split.warm_items), torch.device("cpu"))
    kind = get_methods([method])[0]
    if kind.content == "ids":
        return ids
    vectors = np.random.default_rng(0).standard_normal((len(split.item_ids), CONTENT_DIM), dtype=np.float32)
    content = ItemInputs.from_content(vectors, torch.device("cpu"))
    return content.with_id_part(ids) if kind.id_part else content


def run(prep, method: str, mode: str, steps: int, batch_size: int | None) -> Timing:
    split = next(iter(prep.splits.values()))
    job = train_job(prep, split.protocol, method, prep.config.train.seed, item_inputs(split, method))
    if job.train.objective != "prefixes":
        raise SystemExit(f"{method}: train.objective is {job.train.objective!r} in this config, not 'prefixes'; nothing to compare")
    job = replace(job, model=replace(job.model, positions="from_start"))
    if batch_size is not None:
        job = replace(job, train=replace(job.train, batch_size=batch_size))
    device = torch.device("cpu")
    world = World()
    parts = trainer.build_parts(job, device, world)
    parts.model.train()
    batches = trainer.global_batches(trainer.sample_epoch(split.train, job.train, job.history_len, job.target_len, 0), job.train.batch_size, world)
    batches = batches[: steps + 1]
    extras = parts.negatives.epoch_extras(0, len(batches))
    host = list(trainer.host_batches(batches, job.inputs, world, False, extras))
    grouped_before = trainer.LENGTH_GROUPED_OBJECTIVES
    trainer.LENGTH_GROUPED_OBJECTIVES = MODES[mode]
    try:
        torch.manual_seed(0)
        trainer.train_step(parts, host[0], len(batches[0]))  # warm-up, untimed
        losses = []
        started = time.perf_counter()
        for batch, pairs in zip(host[1:], batches[1:]):
            losses.append(trainer.train_step(parts, batch, len(pairs))[0])
        elapsed = time.perf_counter() - started
    finally:
        trainer.LENGTH_GROUPED_OBJECTIVES = grouped_before
    slots = sum(padded_slots(batch.history_lengths, mode) for batch in host[1:])
    return Timing(elapsed / max(1, len(host) - 1), float(np.mean(losses)), slots)


def padded_slots(lengths: torch.Tensor, mode: str) -> int:
    """History positions one batch runs: every row at the batch's longest, or at its group's width."""
    if mode == "padded":
        return int(lengths.max()) * len(lengths)
    return int(length_group_widths(lengths, int(lengths.max())).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default=str(ROOT / "training" / "configs" / "amazon-scientific.toml"))
    parser.add_argument("--methods", nargs="+", default=["id_baseline", "learn_hybrid"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run, after one untimed")
    parser.add_argument("--batch-size", type=int, help="instead of the config's (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prep = prepare(load_config(PipelineConfig, args.config))
    print(f"{args.config}: {args.steps} steps per run, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'method':<14} {'mode':<8} {'s/step':>8} {'slots':>10} {'loss':>8} {'speed-up':>9}")
    for method in args.methods:
        timings = {mode: run(prep, method, mode, args.steps, args.batch_size) for mode in MODES}
        base = timings["padded"]
        for mode, t in timings.items():
            print(f"{method:<14} {mode:<8} {t.seconds_per_step:8.3f} {t.slots:10d} {t.loss:8.4f} {base.seconds_per_step / t.seconds_per_step:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
