"""A planted-signal check that the towers learn: they must beat popularity and must not collapse.

Users consume items of one content cluster; item content is its cluster's centroid plus noise;
a few items per cluster are globally popular. Popularity alone finds the popular items of every
cluster; only a model that read the history's content finds the user's own cluster. A run that
collapses (all vectors alike) or ignores the history fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import cluster_content, clustered_interactions, tiny_pch_config
from learn_features.data.split import SplitConfig, split_dataset
from learn_features.pch import checkpoint
from learn_features.pch.inference import item_vectors, user_vectors
from learn_features.pch.inputs import ItemInputs
from learn_features.retrieval import paired_bootstrap_interval, per_user_scores, rank_scores
from training import baselines
from training.diagnostics import effective_rank, mean_pairwise_cosine
from training.trainer import TrainConfig, TrainJob, train_towers

N_ITEMS, N_CLUSTERS, D_OUT = 120, 6, 16


def test_trained_towers_beat_popularity_without_collapse(tmp_path: Path, single_thread) -> None:
    interactions, catalog = clustered_interactions(n_users=240, n_items=N_ITEMS, n_clusters=N_CLUSTERS, events_per_user=(10, 16), seed=3)
    split = split_dataset(interactions, catalog, SplitConfig(cut_quantile=0.6, history_len=8, target_len=4, val_fraction=0.15, seed=3))
    inputs = ItemInputs.from_content(cluster_content(n_items=N_ITEMS, n_clusters=N_CLUSTERS, noise=1.0, seed=3), torch.device("cpu"))
    config = TrainConfig(lr=3e-3, epochs=12, batch_size=16, coverage=2.0, patience=4, device="cpu", select_metric="recall@10")
    result = train_towers(TrainJob(tmp_path, tiny_pch_config(d_out=D_OUT, max_len=8), config, split, inputs, 8, 4, "learn_v1"), progress=False)
    assert result.history[-1]["loss"] < 0.9 * result.history[-1]["chance_loss"], result.history

    model = checkpoint.build_model(checkpoint.load_payload(result.best_checkpoint), torch.device("cpu"))
    users = user_vectors(model, inputs, split.test.histories)
    items = item_vectors(model, inputs, np.arange(N_ITEMS))
    assert mean_pairwise_cosine(items) < 0.5 and effective_rank(items) > N_CLUSTERS - 1

    depth = 20
    learned = per_user_scores(rank_scores(users @ items.T, split.test.exclude, depth), split.test.targets, (depth,))
    popular = per_user_scores(rank_scores(baselines.popularity_scores(split, split.test), split.test.exclude, depth), split.test.targets, (depth,))
    low, _ = paired_bootstrap_interval(learned[f"recall@{depth}"] - popular[f"recall@{depth}"])
    assert low > 0, (learned[f"recall@{depth}"].mean(), popular[f"recall@{depth}"].mean())
