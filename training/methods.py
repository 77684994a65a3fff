"""The retrieval methods compared side by side in one run, and the one protocol they share.

- ``learn_v1/v2/v3``: LLM content embeddings through the PCH towers, item-tower variants 1-3.
- ``learn_hybrid``: ``learn_v1`` plus a learned ID residual on the item input of every item with
  a training event, dropped at random in training (``model.id_dropout``) so the content path
  alone stays trained; cold items are served from content alone (``learn_features.pch.model.HybridInput``).
- ``text_encoder``: the same towers (variant 1) over a small sentence encoder (MiniLM) instead of the LLM.
- ``text_hybrid``: ``learn_hybrid`` over the sentence encoder's content: where a small encoder
  embeds the catalog's texts better than the LLM (Amazon Scientific), its content path plus
  the ID residual.
- ``id_baseline``: the same towers (variant 1) with learned item-ID embeddings instead of content;
  every item with a training event owns an id, the rest share one "unknown" slot.
- ``llm_frozen``: the paper's Baseline-v1, no alignment: a user is the mean of their history's
  (centred) LLM content embeddings and an item its content embedding, compared by cosine.
- ``item_knn``, ``popularity_recent``, ``popularity``: what a user already has (see ``training.baselines``).

The protocol is RecBole's ``AbstractRecommender`` cut to what the tables need. A method is
fitted on a split (``Method.fit``: what it learns from the training events, such as item_knn's
neighbourhood with k chosen on the validation users; the towers' own training, their
``calculate_loss``, is ``training.trainer``'s and runs before), then scores users against the
whole catalog (``RetrievalModel.full_sort_predict``). Methods are looked up by name
(``get_methods``). Adding one is a ``RetrievalModel`` subclass and its entry in ``METHODS``.

The order of ``METHODS`` is the order of every table: ``learn_v1`` (the reference of the paired
differences) first, the trivial rows last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import scipy.sparse as sp

from learn_features.data.split import EvalUsers, Split
from learn_features.device import pick_device
from learn_features.errors import LearnFeaturesError
from learn_features.new_items import recent_new_shares
from learn_features.trained_run import TrainedRun
from training import baselines
from training.trainer import validation_score_of_scores

if TYPE_CHECKING:
    from training.pipeline import Prepared

Content = Literal["llm", "text_encoder", "ids"]
#: What content encoders a method can read: methods reading one score a new item from its text.
CONTENT_KINDS: tuple[Content, ...] = ("llm", "text_encoder")


@dataclass(frozen=True)
class Scored:
    """A method's (users x catalog items) scores, and what its vectors say (empty without vectors)."""

    scores: np.ndarray
    diagnostics: dict = field(default_factory=dict)


class RetrievalModel(ABC):
    """A method fitted on one split: the constructor fits, ``full_sort_predict`` scores."""

    trained: ClassVar[bool] = False  # trained towers: one model per training seed

    def __init__(self, method: Method, prep: Prepared, split: Split) -> None:
        self.method, self.prep, self.split = method, prep, split

    @abstractmethod
    def full_sort_predict(self, users: EvalUsers, seed: int) -> Scored:
        """Every catalog item's score for each of ``users`` (``seed``: which trained model)."""


@dataclass(frozen=True)
class Method:
    """One row of the tables: its name, the model that implements it and what that model reads."""

    name: str
    model: type[RetrievalModel]
    content: Content | None = None  # what the towers (or the content mean) read
    variant: int | None = None  # item-tower variant of trained towers
    id_part: bool = False  # the towers add a learned ID residual to the content of items with a training event

    @property
    def trained(self) -> bool:
        return self.model.trained

    @property
    def learns_ids(self) -> bool:
        """Whether the towers learn an ID slot per item with a training event (the ID baseline, the hybrid)."""
        return self.content == "ids" or self.id_part

    def fit(self, prep: Prepared, split: Split) -> RetrievalModel:
        return self.model(self, prep, split)


class Popularity(RetrievalModel):
    def full_sort_predict(self, users: EvalUsers, seed: int) -> Scored:
        return Scored(baselines.popularity_scores(self.split, users))


class RecentPopularity(RetrievalModel):
    def full_sort_predict(self, users: EvalUsers, seed: int) -> Scored:
        return Scored(baselines.popularity_recent_scores(self.split, users, self.prep.config.eval.recent_days))


class ItemKNN(RetrievalModel):
    """Item-to-item cosine over training co-occurrences, each item's k nearest neighbours kept;
    k is chosen on the validation users (never on test users) by the training metric."""

    def __init__(self, method: Method, prep: Prepared, split: Split) -> None:
        super().__init__(method, prep, split)
        cosine = baselines.cooccurrence_cosine(split.train, len(split.item_ids))
        self.neighbours = self.choose_k(cosine)
        self.similarity = baselines.top_k_neighbours(cosine, self.neighbours)

    def choose_k(self, cosine: sp.csr_matrix) -> int:
        split = self.split
        if not len(split.val):
            return baselines.KNN_NEIGHBOURS[-1]
        metric = self.prep.config.train.select_metric
        depth = int(metric.split("@")[1])

        def score(k: int) -> float:
            scores = baselines.item_knn_scores(baselines.top_k_neighbours(cosine, k), split.val.histories)
            return validation_score_of_scores(scores, split.val, metric, depth)

        return max(baselines.KNN_NEIGHBOURS, key=score)

    def full_sort_predict(self, users: EvalUsers, seed: int) -> Scored:
        return Scored(baselines.item_knn_scores(self.similarity, users.histories), {"neighbours": self.neighbours})


class VectorModel(RetrievalModel):
    """A method that scores by the dot product of user and item vectors, with their diagnostics.

    A method's rule for new items (``eval.cold_bias`` or ``eval.cold_share``,
    ``learn_features.new_items``) applies after the diagnostics, which describe the vectors themselves.
    """

    @abstractmethod
    def vectors(self, users: EvalUsers, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors for ``users``, item vectors for the whole catalog)."""

    def full_sort_predict(self, users: EvalUsers, seed: int) -> Scored:
        user_vecs, item_vecs = self.vectors(users, seed)
        scores = user_vecs @ item_vecs.T
        from training.diagnostics import vector_diagnostics  # scipy.stats: only evaluation needs it

        diagnostics = vector_diagnostics(user_vecs, item_vecs, scores, self.split.positive_counts(), self.split.warm_items)
        rule = self.prep.config.eval.new_item_rule(self.method.name)
        if rule is not None:
            warm = self.split.warm_items
            recent = recent_new_shares(users.histories, warm, rule.window)
            scores, diagnostics[f"cold_{rule.rule}"] = rule.apply(scores, warm, users.exclude, recent)
        return Scored(scores, diagnostics)


class FrozenContent(VectorModel):
    """Baseline-v1: centred content vectors; a user is the mean of their history's."""

    def vectors(self, users: EvalUsers, seed: int) -> tuple[np.ndarray, np.ndarray]:
        store = self.prep.content_store(self.method.content)
        items = baselines.centred_content(store.take(np.arange(len(store))).astype(np.float32), self.split.warm_items)
        return baselines.mean_history_vectors(items, users.histories), items


class Towers(VectorModel):
    """Trained PCH towers (``best.pt`` of each seed) over the method's content, item ids, or both."""

    trained = True

    def vectors(self, users: EvalUsers, seed: int) -> tuple[np.ndarray, np.ndarray]:
        prep, split = self.prep, self.split
        device = pick_device(prep.config.train.device)
        inputs = prep.item_inputs(split, self.method, device)
        tower = TrainedRun.of_checkpoint(prep.run.best(split.protocol, self.method.name, seed), inputs, split.item_ids, device)
        return tower.user_vectors(users.histories), tower.item_vectors()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("learn_v1", Towers, "llm", 1),
        Method("learn_v2", Towers, "llm", 2),
        Method("learn_v3", Towers, "llm", 3),
        Method("learn_hybrid", Towers, "llm", 1, id_part=True),
        Method("text_encoder", Towers, "text_encoder", 1),
        Method("text_hybrid", Towers, "text_encoder", 1, id_part=True),
        Method("id_baseline", Towers, "ids", 1),
        Method("llm_frozen", FrozenContent, "llm"),
        Method("item_knn", ItemKNN),
        Method("popularity_recent", RecentPopularity),
        Method("popularity", Popularity),
    )
}


def get_methods(names: list[str]) -> list[Method]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise LearnFeaturesError(f"eval.methods: unknown method(s) {unknown}; choose from {list(METHODS)}")
    order = list(METHODS)
    return [METHODS[n] for n in sorted(dict.fromkeys(names), key=order.index)]
