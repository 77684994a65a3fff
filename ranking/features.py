"""Feature matrices for the tree and DNN rankers, fitted on the training period only.

``FeatureSpec`` holds everything learned from training rows (id vocabularies, genre list,
standardisation, the positive-rate prior, PCA of the LEARN embeddings) so validation,
evaluation and online scoring transform their rows identically. Ids unseen in training map
to index 0 (DNN) / missing category (LightGBM): that is the ID-feature cold start the LEARN
inputs are meant to cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from learn_features.errors import LearnFeaturesError

#: Pseudo-count of the positive-rate prior: a user with 2 ratings should not get rate 0 or 1.
RATE_PRIOR_STRENGTH = 5.0


@dataclass
class FeatureSpec:
    user_vocab: dict[str, int]  # id -> 1..n (0 = unseen)
    item_vocab: dict[str, int]
    genres: list[str]
    item_numeric_columns: list[str]
    numeric_fill: dict[str, float]  # training medians for item numeric columns
    prior_rate: float
    dense_mean: np.ndarray
    dense_std: np.ndarray
    learn_dim: int | None
    pca_user: PCA | None
    pca_item: PCA | None

    @property
    def dense_names(self) -> list[str]:
        return [
            "log_user_n",
            "log_user_pos",
            "user_pos_rate",
            "log_item_n",
            "log_item_pos",
            "item_pos_rate",
            *(f"genre={g}" for g in self.genres),
            *self.item_numeric_columns,
        ]


def _raw_dense(frame: pd.DataFrame, genres: list[str], numeric: list[str], fill: dict[str, float], prior: float) -> np.ndarray:
    cols = []
    for entity in ("user", "item"):
        n = frame[f"{entity}_n"].to_numpy(dtype=np.float64)
        pos = frame[f"{entity}_pos"].to_numpy(dtype=np.float64)
        cols += [np.log1p(n), np.log1p(pos), (pos + RATE_PRIOR_STRENGTH * prior) / (n + RATE_PRIOR_STRENGTH)]
    if genres:
        index = {g: j for j, g in enumerate(genres)}
        multi_hot = np.zeros((len(frame), len(genres)))
        for i, gs in enumerate(frame["genres"]):
            for g in gs:
                j = index.get(g)
                if j is not None:
                    multi_hot[i, j] = 1.0
        cols += list(multi_hot.T)
    for c in numeric:
        cols.append(frame[c].astype(float).fillna(fill[c]).to_numpy())
    return np.column_stack(cols).astype(np.float64)


def embedding_matrix(frame: pd.DataFrame, entity: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors with zeros where absent, presence mask) for ``<entity>_embedding``."""
    mat = np.zeros((len(frame), dim), dtype=np.float32)
    present = np.zeros(len(frame), dtype=bool)
    for i, v in enumerate(frame[f"{entity}_embedding"]):
        if v is not None:
            if len(v) != dim:
                raise LearnFeaturesError(f"row {i}: {entity} embedding has length {len(v)}, expected {dim}")
            mat[i] = v
            present[i] = True
    return mat, present


def fit_feature_spec(
    train: pd.DataFrame,
    item_numeric_columns: list[str],
    has_genres: bool,
    with_learn: bool,
    pca_dims: int,
    seed: int,
) -> FeatureSpec:
    if train.empty:
        raise LearnFeaturesError("training period has no impressions")
    users = pd.unique(train["user_id"])
    items = pd.unique(train["item_id"])
    genres = sorted({g for gs in train["genres"] for g in gs}) if has_genres else []
    fill = {c: float(np.nanmedian(train[c].astype(float))) if train[c].notna().any() else 0.0 for c in item_numeric_columns}
    prior = float(train["label"].mean())
    raw = _raw_dense(train, genres, item_numeric_columns, fill, prior)
    std = raw.std(axis=0)
    learn_dim = pca_user = pca_item = None
    if with_learn:
        learn_dim = _learn_dim(train)
        pca_user, pca_item = (_fit_pca(train, e, learn_dim, pca_dims, seed) for e in ("user", "item"))
    return FeatureSpec(
        user_vocab={str(u): i + 1 for i, u in enumerate(users)},
        item_vocab={str(v): i + 1 for i, v in enumerate(items)},
        genres=genres,
        item_numeric_columns=list(item_numeric_columns),
        numeric_fill=fill,
        prior_rate=prior,
        dense_mean=raw.mean(axis=0),
        dense_std=np.where(std > 0, std, 1.0),
        learn_dim=learn_dim,
        pca_user=pca_user,
        pca_item=pca_item,
    )


def _learn_dim(train: pd.DataFrame) -> int:
    dims = {len(v) for col in ("user_embedding", "item_embedding") for v in train[col] if v is not None}
    if not dims:
        raise LearnFeaturesError(
            "no training impression has a LEARN embedding point-in-time (every embedding is newer than its "
            "impression); set split.train_start at or after the embedding snapshot time, or publish earlier snapshots"
        )
    if len(dims) > 1:
        raise LearnFeaturesError(f"user and item LEARN embeddings have different dimensions {sorted(dims)}; they must share a space")
    return dims.pop()


def _fit_pca(train: pd.DataFrame, entity: str, dim: int, pca_dims: int, seed: int) -> PCA | None:
    """PCA over the distinct entities' vectors seen in training (not weighted by impressions)."""
    mat, present = embedding_matrix(train, entity, dim)
    ids = train[f"{entity}_id"].to_numpy()[present]
    _, first = np.unique(ids, return_index=True)
    distinct = mat[present][first]
    k = min(pca_dims, dim, len(distinct))
    if k < 1:
        return None
    return PCA(n_components=k, random_state=seed).fit(distinct)


def dense_features(frame: pd.DataFrame, spec: FeatureSpec, standardise: bool) -> np.ndarray:
    raw = _raw_dense(frame, spec.genres, spec.item_numeric_columns, spec.numeric_fill, spec.prior_rate)
    return ((raw - spec.dense_mean) / spec.dense_std).astype(np.float32) if standardise else raw


def id_indices(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    u = frame["user_id"].astype(str).map(spec.user_vocab).fillna(0).to_numpy(dtype=np.int64)
    i = frame["item_id"].astype(str).map(spec.item_vocab).fillna(0).to_numpy(dtype=np.int64)
    return u, i


def tree_features(frame: pd.DataFrame, spec: FeatureSpec, with_learn: bool) -> pd.DataFrame:
    """LightGBM input: categorical id codes (unseen -> missing), raw side features and, for the
    LEARN variant, user-item cosine plus a few PCA dimensions of each embedding."""
    u, i = id_indices(frame, spec)
    out = pd.DataFrame(dense_features(frame, spec, standardise=False), columns=spec.dense_names)
    out.insert(0, "item_code", pd.Categorical(np.where(i > 0, i, -1), categories=range(1, len(spec.item_vocab) + 1)))
    out.insert(0, "user_code", pd.Categorical(np.where(u > 0, u, -1), categories=range(1, len(spec.user_vocab) + 1)))
    if with_learn:
        assert spec.learn_dim is not None, "spec was fitted without LEARN features"
        uv, up = embedding_matrix(frame, "user", spec.learn_dim)
        iv, ip = embedding_matrix(frame, "item", spec.learn_dim)
        both = up & ip
        norms = np.linalg.norm(uv, axis=1) * np.linalg.norm(iv, axis=1)
        cosine = np.full(len(frame), np.nan)
        ok = both & (norms > 0)
        cosine[ok] = (uv[ok] * iv[ok]).sum(axis=1) / norms[ok]
        out["learn_cosine"] = cosine
        for entity, vecs, present, pca in (("user", uv, up, spec.pca_user), ("item", iv, ip, spec.pca_item)):
            if pca is None:
                continue
            proj = np.full((len(frame), pca.n_components_), np.nan)
            if present.any():
                proj[present] = pca.transform(vecs[present])
            for k in range(pca.n_components_):
                out[f"learn_{entity}_pc{k}"] = proj[:, k]
    return out


def dnn_inputs(frame: pd.DataFrame, spec: FeatureSpec, with_learn: bool) -> dict[str, np.ndarray]:
    u, i = id_indices(frame, spec)
    inputs = {"user_idx": u, "item_idx": i, "dense": dense_features(frame, spec, standardise=True)}
    if with_learn:
        assert spec.learn_dim is not None, "spec was fitted without LEARN features"
        uv, up = embedding_matrix(frame, "user", spec.learn_dim)
        iv, ip = embedding_matrix(frame, "item", spec.learn_dim)
        inputs.update(user_emb=uv, item_emb=iv, emb_mask=np.column_stack([up, ip]).astype(np.float32))
    return inputs
