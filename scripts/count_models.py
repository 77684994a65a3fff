"""Count-based models on a config's splits: how much do co-occurrence counts alone find?

A diagnostic for README's MovieLens section, not a method of the tables. Item-kNN (the tables'
row), PureSVD (Cremonesi et al., RecSys 2010: a user scores items by their history's summed
projected onto the top right singular vectors of the training user-item matrix, ``h V V^T``;
``model.id_init = "svd"`` starts the hybrid from the same SVD; also with unit item vectors, as a
cosine tower's are) and EASE (Steck, WWW 2019: a closed-form item-item regression) each score
the validation and the test users of every protocol over a small grid, on the same users,
exclusions and metric as the training's model selection (``train.select_metric``):

    .venv/bin/python scripts/count_models.py -c training/configs/movielens-benchmark.toml

EASE inverts a dense (warm items x warm items) matrix: about 20 s for MovieLens' 6,000 to
9,000 warm items on one core, and out of reach for catalogs of a few 100,000 items.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import numpy as np

from learn_features.config import load_config
from learn_features.data.incidence import incidence_matrix
from learn_features.data.split import EvalUsers, Split
from learn_features.pch.id_init import truncated_svd
from learn_features.retrieval import unit_rows
from training import baselines
from training.config import PipelineConfig
from training.pipeline import prepare
from training.trainer import validation_score_of_scores

#: (users x items) scores of a fitted model for a set of users.
Scorer = Callable[[EvalUsers], np.ndarray]


def item_knn(split: Split) -> Iterator[tuple[str, Scorer]]:
    cosine = baselines.cooccurrence_cosine(split.train, len(split.item_ids))
    for k in baselines.KNN_NEIGHBOURS:
        similarity = baselines.top_k_neighbours(cosine, k)
        yield f"item_knn k={k}", lambda users, s=similarity: baselines.item_knn_scores(s, users.histories)


def pure_svd(split: Split) -> Iterator[tuple[str, Scorer]]:
    n_items = len(split.item_ids)
    matrix = incidence_matrix([s.items for s in split.train.values()], n_items)

    def scorer(vectors: np.ndarray, items: np.ndarray) -> Scorer:
        """A user's history summed and projected on ``vectors``, scored against ``items``."""
        return lambda users: np.asarray(incidence_matrix(users.histories, n_items) @ vectors) @ items.T

    for rank in (32, 64, 128):
        _, vectors = truncated_svd(matrix, rank)
        yield f"pure_svd rank={rank}", scorer(vectors, vectors)
        # The same with every item's factor cut to unit length, as a cosine tower's item vectors
        # are: what the items' lengths (which follow their popularity) are worth to it.
        yield f"pure_svd rank={rank} unit items", scorer(vectors, unit_rows(vectors))


def ease(split: Split) -> Iterator[tuple[str, Scorer]]:
    n_items = len(split.item_ids)
    warm = np.flatnonzero(split.warm_items)
    matrix = incidence_matrix([s.items for s in split.train.values()], n_items)[:, warm]
    gram = (matrix.T @ matrix).toarray()
    for penalty in (100.0, 300.0, 1000.0):
        inverse = np.linalg.inv(gram + penalty * np.eye(len(warm)))
        weights = inverse / -np.diag(inverse)
        np.fill_diagonal(weights, 0.0)

        def score(users: EvalUsers, w: np.ndarray = weights) -> np.ndarray:
            scores = np.full((len(users), n_items), -np.inf)
            scores[:, warm] = np.asarray(incidence_matrix(users.histories, n_items)[:, warm] @ w)
            return scores

        yield f"ease lambda={penalty:g}", score


MODELS = (item_knn, pure_svd, ease)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="pipeline TOML (training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args()
    config = load_config(PipelineConfig, args.config, args.set)
    metric = config.train.select_metric
    depth = int(metric.split("@")[1])
    print(f"protocol\tmodel\tvalidation {metric}\ttest {metric}")
    for protocol, split in prepare(config).splits.items():
        for family in MODELS:
            for name, scorer in family(split):
                val, test = (validation_score_of_scores(scorer(users), users, metric, depth) for users in (split.val, split.test))
                print(f"{protocol}\t{name}\t{val:.4f}\t{test:.4f}", flush=True)


if __name__ == "__main__":
    main()
