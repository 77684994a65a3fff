"""The retrieval-method registry: lookup by name in table order, one protocol (fit on a split,
score users against the whole catalog), and a new method as one registered class."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core_fixtures import clustered_split
from learn_features.data.split import EvalUsers
from learn_features.errors import LearnFeaturesError
from training import baselines
from training.config import PipelineConfig
from training.methods import METHODS, ItemKNN, Method, RetrievalModel, Scored, get_methods


def prep_for_tests() -> SimpleNamespace:
    """What the count-based methods read of a prepared run: its config."""
    return SimpleNamespace(config=PipelineConfig())


def test_lookup_keeps_the_table_order_and_names_unknown_methods() -> None:
    assert [m.name for m in get_methods(["popularity", "learn_v1", "item_knn", "learn_v1"])] == ["learn_v1", "item_knn", "popularity"]
    with pytest.raises(LearnFeaturesError, match=r"eval.methods: unknown method\(s\) \['bpr'\]; choose from \['learn_v1', "):
        get_methods(["learn_v1", "bpr"])
    assert [m.name for m in METHODS.values() if m.trained] == ["learn_v1", "learn_v2", "learn_v3", "learn_hybrid", "text_encoder", "text_hybrid", "id_baseline"]
    assert (METHODS["id_baseline"].content, METHODS["learn_v3"].variant, METHODS["llm_frozen"].content) == ("ids", 3, "llm")
    hybrid = METHODS["learn_hybrid"]
    assert (hybrid.content, hybrid.variant, hybrid.id_part, hybrid.learns_ids) == ("llm", 1, True, True)
    text_hybrid = METHODS["text_hybrid"]  # the hybrid over the sentence encoder's content
    assert (text_hybrid.content, text_hybrid.variant, text_hybrid.id_part) == ("text_encoder", 1, True)
    assert [m.name for m in METHODS.values() if m.learns_ids] == ["learn_hybrid", "text_hybrid", "id_baseline"]


def test_count_methods_score_every_user_against_the_whole_catalog() -> None:
    split = clustered_split()
    for name in ("popularity", "popularity_recent", "item_knn"):
        scored = METHODS[name].fit(prep_for_tests(), split).full_sort_predict(split.test, seed=0)
        assert scored.scores.shape == (len(split.test), len(split.item_ids)), name
    np.testing.assert_array_equal(
        METHODS["popularity"].fit(prep_for_tests(), split).full_sort_predict(split.test, 0).scores,
        baselines.popularity_scores(split, split.test),
    )


def test_item_knn_chooses_its_k_on_validation_users_when_fitted() -> None:
    split = clustered_split()
    model = METHODS["item_knn"].fit(prep_for_tests(), split)
    assert isinstance(model, ItemKNN) and model.neighbours in baselines.KNN_NEIGHBOURS
    assert model.full_sort_predict(split.test, 0).diagnostics == {"neighbours": model.neighbours}
    without_validation = ItemKNN(METHODS["item_knn"], prep_for_tests(), type(split)(**{**vars(split), "val": EvalUsers()}))
    assert without_validation.neighbours == baselines.KNN_NEIGHBOURS[-1]


class Constant(RetrievalModel):
    """A new method: every item scores its catalog index."""

    def full_sort_predict(self, users: EvalUsers, seed: int) -> Scored:
        return Scored(np.tile(np.arange(len(self.split.item_ids), dtype=float), (len(users), 1)))


def test_a_new_method_is_one_class_and_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    split = clustered_split()
    monkeypatch.setitem(METHODS, "constant", Method("constant", Constant))
    (method,) = get_methods(["constant"])
    assert not method.trained
    scored = method.fit(prep_for_tests(), split).full_sort_predict(split.test, 0)
    assert scored.scores.shape == (len(split.test), len(split.item_ids)) and scored.diagnostics == {}
