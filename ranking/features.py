"""Feature matrices for the tree and DNN rankers, fitted on the training period only.

``FeatureSpec`` holds everything learned from training rows (id vocabularies, genre list,
standardisation, the positive-rate prior, PCA of the LEARN embeddings) so validation,
evaluation and online scoring transform their rows identically. Ids unseen in training map
to index 0 (DNN) / missing category (LightGBM): that is the ID-feature cold start the LEARN
inputs are meant to cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from learn_features.errors import LearnFeaturesError

#: Pseudo-count of the positive-rate prior: a user with 2 ratings should not get rate 0 or 1.
RATE_PRIOR_STRENGTH = 5.0

Inputs = TypeVar("Inputs")


@dataclass(frozen=True)
class Featurized(Generic[Inputs]):
    """One period's rows as a ranker reads them: its input matrices, labels and users.

    A function of the rows, the feature spec and the arm's vectors only, never of the seed: the
    experiment builds it once per arm and period and trains every seed on it. Rankers read it
    and never write to it.
    """

    inputs: Inputs
    labels: np.ndarray
    users: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, inputs: Inputs) -> Featurized[Inputs]:
        return cls(inputs, frame["label"].to_numpy(), frame["user_id"].to_numpy())


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


def vector_columns(vectors: str) -> tuple[str, str]:
    """The (user, item) dataset columns of an arm's vectors: LEARN's, or a control's (``ranking/controls.py``)."""
    return ("user_embedding", "item_embedding") if vectors == "learn" else (f"user_{vectors}", f"item_{vectors}")


def present(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Rows whose vector in ``column`` exists (not None)."""
    return np.array([v is not None for v in frame[column]], dtype=bool)


def embedding_matrix(frame: pd.DataFrame, column: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors with zeros where absent, presence mask) for a vector column such as ``user_embedding``."""
    mat = np.zeros((len(frame), dim), dtype=np.float32)
    mask = present(frame, column)
    for i in np.flatnonzero(mask):
        v = frame[column].iat[i]
        if len(v) != dim:
            raise LearnFeaturesError(f"row {i}: {column} has length {len(v)}, expected {dim}")
        mat[i] = v
    return mat, mask


def fit_feature_spec(
    train: pd.DataFrame,
    item_numeric_columns: list[str],
    has_genres: bool,
    with_learn: bool,
    pca_dims: int,
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
    learn_dim = pca_item = None
    if with_learn:
        learn_dim = learn_vector_dim(train)
        pca_item = _fit_item_pca(train, learn_dim, pca_dims)
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
        pca_item=pca_item,
    )


def learn_vector_dim(train: pd.DataFrame) -> int:
    """The LEARN dimension, from the training rows' vectors (refused when none has one)."""
    dims = {len(v) for col in ("user_embedding", "item_embedding") for v in train[col] if v is not None}
    if not dims:
        raise LearnFeaturesError(
            "no training impression has a LEARN embedding point-in-time (every embedding is newer than its "
            "impression); set split.train_start at or after the embedding snapshot time, or publish earlier snapshots"
        )
    if len(dims) > 1:
        raise LearnFeaturesError(f"user and item LEARN embeddings have different dimensions {sorted(dims)}; they must share a space")
    return dims.pop()


def exact_pca(matrix: np.ndarray, n_components: int) -> PCA:
    """PCA whose components do not depend on the machine's BLAS thread count.

    LightGBM + LEARN's UAUC moved by 0.8 pp between runs on byte-identical inputs because the
    covariance product inside PCA rounds differently with 1 and 2 BLAS threads: components
    moved by up to 6e-4, the PCA features by ~1e-6, and the trees split differently
    (docs/ranking.md, "Run-to-run changes"). One BLAS thread and the exact (LAPACK) solver
    make fit and transform the same bits wherever they run (with the same BLAS library).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return PCA(n_components=n_components, svd_solver="full").fit(matrix)


def pca_transform(pca: PCA, matrix: np.ndarray) -> np.ndarray:
    """``pca.transform`` under one BLAS thread, for the reason ``exact_pca`` gives."""
    with threadpool_limits(limits=1, user_api="blas"):
        return pca.transform(matrix)


def _fit_item_pca(train: pd.DataFrame, dim: int, pca_dims: int) -> PCA | None:
    """PCA over the distinct training items' LEARN vectors (not weighted by impressions)."""
    mat, mask = embedding_matrix(train, "item_embedding", dim)
    ids = train["item_id"].to_numpy()[mask]
    _, first = np.unique(ids, return_index=True)
    distinct = mat[mask][first]
    k = min(pca_dims, dim, len(distinct))
    if k < 1:
        return None
    return exact_pca(distinct, k)


def dense_features(frame: pd.DataFrame, spec: FeatureSpec, standardise: bool) -> np.ndarray:
    raw = _raw_dense(frame, spec.genres, spec.item_numeric_columns, spec.numeric_fill, spec.prior_rate)
    return ((raw - spec.dense_mean) / spec.dense_std).astype(np.float32) if standardise else raw


def id_indices(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    u = frame["user_id"].astype(str).map(spec.user_vocab).fillna(0).to_numpy(dtype=np.int64)
    i = frame["item_id"].astype(str).map(spec.item_vocab).fillna(0).to_numpy(dtype=np.int64)
    return u, i


def row_cosine(a: np.ndarray, b: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Row-wise cosine, NaN where not ``defined`` or a vector is zero."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    ok = defined & (norms > 0)
    out = np.full(len(a), np.nan)
    out[ok] = (a[ok] * b[ok]).sum(axis=1) / norms[ok]
    return out


def tree_features(frame: pd.DataFrame, spec: FeatureSpec, with_learn: bool) -> pd.DataFrame:
    """LightGBM input: categorical id codes (unseen -> missing), raw side features and, for the
    LEARN variant, three kinds of LEARN features:

    * ``learn_cosine``: cosine(user vector, item vector), where the user has a vector as of
      the row;
    * ``learn_history_cosine``: cosine(item vector, mean item vector of the user's history
      before ``as_of``) (``ranking.joins.history_similarity``), which needs no user vector;
    * ``learn_item_pc<k>``: PCA components of the item vector.

    No feature reads the user vector's coordinates: a tree would split on them in the rows
    that have one and learn little that carries to the rows (users) that do not.
    """
    u, i = id_indices(frame, spec)
    out = pd.DataFrame(dense_features(frame, spec, standardise=False), columns=spec.dense_names)
    out.insert(0, "item_code", pd.Categorical(np.where(i > 0, i, -1), categories=range(1, len(spec.item_vocab) + 1)))
    out.insert(0, "user_code", pd.Categorical(np.where(u > 0, u, -1), categories=range(1, len(spec.user_vocab) + 1)))
    if with_learn:
        assert spec.learn_dim is not None, "spec was fitted without LEARN features"
        uv, up = embedding_matrix(frame, "user_embedding", spec.learn_dim)
        iv, ip = embedding_matrix(frame, "item_embedding", spec.learn_dim)
        out["learn_cosine"] = row_cosine(uv, iv, up & ip)
        out["learn_history_cosine"] = frame["learn_history_cosine"].to_numpy(dtype=np.float64)
        if spec.pca_item is not None:
            proj = np.full((len(frame), spec.pca_item.n_components_), np.nan)
            if ip.any():
                proj[ip] = pca_transform(spec.pca_item, iv[ip])
            for k in range(spec.pca_item.n_components_):
                out[f"learn_item_pc{k}"] = proj[:, k]
    return out


def dnn_inputs(frame: pd.DataFrame, spec: FeatureSpec, vectors: str | None) -> dict[str, np.ndarray]:
    """DNN input arrays; ``vectors`` names the auxiliary network's vectors (None: baseline)."""
    u, i = id_indices(frame, spec)
    inputs = {"user_idx": u, "item_idx": i, "dense": dense_features(frame, spec, standardise=True)}
    if vectors is not None:
        assert spec.learn_dim is not None, "spec was fitted without LEARN features"
        user_col, item_col = vector_columns(vectors)
        uv, up = embedding_matrix(frame, user_col, spec.learn_dim)
        iv, ip = embedding_matrix(frame, item_col, spec.learn_dim)
        inputs.update(user_emb=uv, item_emb=iv, emb_mask=np.column_stack([up, ip]).astype(np.float32))
    return inputs
