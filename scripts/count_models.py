"""Count-based models on a config's splits: how much do co-occurrence counts alone find?

A diagnostic for README's MovieLens section, not a method of the tables. Item-kNN (the tables'
row), PureSVD (Cremonesi et al., RecSys 2010: a user scores items by their history's summed
projected onto the top right singular vectors of the training user-item matrix, ``h V V^T``;
``model.id_init = "svd"`` starts the hybrid from the same SVD; also with unit item vectors, as a
cosine tower's are) and EASE (Steck, WWW 2019: a closed-form item-item regression) each score
the validation and the test users of every protocol over a small grid, on the same users,
exclusions and metric as the training's model selection (``train.select_metric``). Then each
family's choice on the validation users is paired against item-kNN's on the test users
(per-user differences, 95% bootstrap interval): whether a count model beats the tables'
item-kNN row by more than the test users' noise, i.e. what a tower must do there.

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
from learn_features.retrieval import paired_bootstrap_interval, per_user_scores, rank_scores, unit_rows
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
#: What the paired comparison reports beside the selection metric: the literature's cut-offs.
PAIRED_METRICS = ("recall@10", "ndcg@10")


def paired_against_item_knn(users: EvalUsers, chosen: dict[str, tuple[str, np.ndarray]],
                            metrics: tuple[str, ...]) -> list[tuple[str, str, float, float, float, float]]:
    """(model, metric, its mean, mean of its per-user difference from item-kNN, interval low,
    high) for each family's chosen model; ``chosen`` maps family -> (model name, test scores)."""
    ks = sorted({int(m.split("@")[1]) for m in metrics})
    per_user = {
        family: (name, per_user_scores(rank_scores(scores, users.exclude, max(ks)), users.targets, ks))
        for family, (name, scores) in chosen.items()
    }
    reference = per_user["item_knn"][1]
    rows = []
    for name, table in per_user.values():
        for metric in metrics:
            differences = table[metric] - reference[metric]
            rows.append((name, metric, float(table[metric].mean()), float(differences.mean()), *paired_bootstrap_interval(differences)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="pipeline TOML (training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args()
    config = load_config(PipelineConfig, args.config, args.set)
    metric = config.train.select_metric
    depth = int(metric.split("@")[1])
    metrics = tuple(dict.fromkeys((metric, *PAIRED_METRICS)))
    print(f"protocol\tmodel\tvalidation {metric}\ttest {metric}")
    paired = []
    for protocol, split in prepare(config).splits.items():
        chosen: dict[str, tuple[str, np.ndarray]] = {}
        for family in MODELS:
            best = -np.inf
            for name, scorer in family(split):
                test_scores = scorer(split.test)
                val = validation_score_of_scores(scorer(split.val), split.val, metric, depth)
                test = validation_score_of_scores(test_scores, split.test, metric, depth)
                print(f"{protocol}\t{name}\t{val:.4f}\t{test:.4f}", flush=True)
                if val > best:
                    best, chosen[family.__name__] = val, (name, test_scores)
        paired += [(protocol, *row) for row in paired_against_item_knn(split.test, chosen, metrics)]
    print("\nEach family's validation choice against item-kNN's, test users, paired 95% interval:")
    print("protocol\tmodel\tmetric\ttest\tminus item_knn [interval]")
    for protocol, name, metric_name, mean, difference, low, high in paired:
        print(f"{protocol}\t{name}\t{metric_name}\t{mean:.4f}\t{difference:+.4f} [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main()
