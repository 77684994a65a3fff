"""RecBole's own SASRec on the shipped Amazon split: is the published SASRec figure reachable here?

The published SASRec row on this split (UniSRec paper, Table 2: Recall@10 0.1080, NDCG@10
0.0553) came from RecBole 1.x run by UniSRec's ``run_baseline.py``. Our ``id_baseline`` stays
below it, and README asks whether our training is what is weak. This script answers with the
published code itself: it writes the shipped interactions as UniSRec's atomic files (each
training prefix of up to 50 items with its next item; validation and test on the last two
events, RecBole's sequential full ranking, which leaves the user's own items in the ranking)
and trains RecBole's SASRec with UniSRec's settings (``--hidden-size 300`` is what UniSRec's
maintainer gives for its ID baselines; RecBole's default is 64).

RecBole is not a dependency of learn-features; install it into a venv of its own:

    python3 -m venv .venv-recbole && .venv-recbole/bin/pip install -r scripts/recbole-requirements.txt
    .venv-recbole/bin/python scripts/recbole_sasrec.py --out runs/recbole-sasrec --hidden-size 64

It prints validation NDCG@10 every ``--eval-step`` epochs and, at the end, the test row of the
best validation epoch, and writes it to ``OUT/result.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import defaultdict
from pathlib import Path

HISTORY = 50  # UniSRec's atomic files cut every history to its last 50 items
DATASET = "Scientific"


def read_sequences(path: Path) -> dict[str, list[str]]:
    """Each user's items in their file order (the split's order; timestamps only encode it)."""
    rows: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    with path.open(newline="") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            rows[row["user_id"]].append((int(row["timestamp"]), line_no, row["item_id"]))
    return {user: [item for _, _, item in sorted(events)] for user, events in rows.items()}


def write_atomic_files(sequences: dict[str, list[str]], folder: Path) -> None:
    """UniSRec's ``convert_to_atomic_files``: every training prefix, then the two held-out events."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    files = {part: (folder / f"{DATASET}.{part}.inter").open("w") for part in ("train", "valid", "test")}
    try:
        for handle in files.values():
            handle.write(header)
        for user, items in sequences.items():
            train = items[:-2]
            for end in range(1, len(train)):
                files["train"].write(f"{user}\t{' '.join(train[:end][-HISTORY:])}\t{train[end]}\n")
            files["valid"].write(f"{user}\t{' '.join(train[-HISTORY:])}\t{items[-2]}\n")
            files["test"].write(f"{user}\t{' '.join(items[:-1][-HISTORY:])}\t{items[-1]}\n")
    finally:
        for handle in files.values():
            handle.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", default="data/amazon-scientific/interactions.csv")
    parser.add_argument("--out", default="runs/recbole-sasrec")
    parser.add_argument("--hidden-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--eval-step", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()

    # RecBole reloads its own best checkpoint with torch.load, which torch >= 2.6 restricts
    # to plain weights unless told otherwise; the file is the one this process just wrote.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    # imported late, so that --help works without RecBole; its quick_start module is not used
    # because it imports ray, whose pinned release no longer imports under numpy>=1.24
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    out = Path(args.out).resolve()
    write_atomic_files(read_sequences(Path(args.interactions)), out / "dataset" / DATASET)
    settings = {
        # UniSRec's props/overall.yaml and its baseline settings
        "data_path": str(out / "dataset"),
        "benchmark_filename": ["train", "valid", "test"],
        "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "hidden_size": args.hidden_size,
        "MAX_ITEM_LIST_LENGTH": HISTORY,
        "epochs": args.epochs,
        "train_batch_size": 2048,
        "eval_batch_size": 2048,
        "learning_rate": 0.001,
        "stopping_step": 10,
        "eval_step": args.eval_step,
        "topk": [10, 50],
        "metrics": ["Recall", "NDCG"],
        "valid_metric": "NDCG@10",
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"},
        "seed": args.seed,
        "reproducibility": True,
        "device": "cpu",
        "use_gpu": False,
        "checkpoint_dir": str(out / "saved"),
        "show_progress": False,
    }
    config = Config(model="SASRec", dataset=DATASET, config_dict=settings)
    os.chdir(out)  # RecBole writes its log files and TensorBoard logs under the working directory
    init_logger(config)  # each epoch's loss and validation scores, on stdout and in OUT/log/
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    best_valid_score, best_valid = trainer.fit(train_data, valid_data, verbose=True, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    record = {"hidden_size": args.hidden_size, "seed": args.seed, "best_valid_score": best_valid_score}
    record["best_valid"], record["test"] = dict(best_valid), dict(test)
    (out / "result.json").write_text(json.dumps(record, indent=2, default=float))
    print(json.dumps(record, indent=2, default=float))


if __name__ == "__main__":
    main()
