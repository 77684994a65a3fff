"""The retrieval-method registry: lookup by name in table order, one protocol (fit on a split,
score users against the whole catalog), and a new method as one registered class."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core_fixtures import clustered_split, load_script
from learn_features.data.split import EvalUsers
from learn_features.errors import LearnFeaturesError
from learn_features.retrieval import rank_scores
from training import baselines
from training.config import EvalConfig, PipelineConfig
from training.methods import METHODS, ItemKNN, Method, RetrievalModel, Scored, VectorModel, get_methods
from learn_features.new_items import RULES


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


class UnitVectors(VectorModel):
    """Vectors that make every item score 0.5 for every user."""

    def vectors(self, users: EvalUsers, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return np.tile([[1.0, 0.0]], (len(users), 1)), np.tile([[0.5, 0.5]], (len(self.split.item_ids), 1))


def test_cold_bias_lifts_the_new_items_of_its_method_alone() -> None:
    """eval.cold_bias adds its value to the score of every item without a training event, for
    the method it names; warm items and the vectors' diagnostics stay as they were."""
    split = clustered_split()
    split.warm_items[:5] = False  # five new items
    warm = split.warm_items
    prep = SimpleNamespace(config=PipelineConfig(eval=EvalConfig(cold_bias={"learn_hybrid": 0.25})))
    plain = UnitVectors(Method("learn_v1", UnitVectors, "llm"), prep, split).full_sort_predict(split.test, 0)
    biased = UnitVectors(Method("learn_hybrid", UnitVectors, "llm"), prep, split).full_sort_predict(split.test, 0)
    np.testing.assert_allclose(plain.scores, 0.5)
    np.testing.assert_allclose(biased.scores[:, warm], 0.5)
    np.testing.assert_allclose(biased.scores[:, ~warm], 0.75)
    assert biased.diagnostics.pop("cold_bias") == 0.25 and biased.diagnostics == plain.diagnostics


def test_cold_share_gives_new_items_each_users_recent_share_of_their_ranking() -> None:
    """eval.cold_share: a user with new items in their latest history events gets new items in
    that share (times the scale) of their ranking, in the method's order; one without gets none."""
    split = clustered_split()
    split.warm_items[::7] = False  # nine new items, spread over the clusters
    new = ~split.warm_items
    users = split.test
    recent = np.array([new[h[-4:]].mean() for h in users.histories])
    assert recent.max() > 0 and recent.min() == 0  # both kinds of user are in the fixture
    config = PipelineConfig(eval=EvalConfig(cold_share={"learn_hybrid": 1.5}, cold_share_window=4))
    scored = WarmFirst(Method("learn_hybrid", WarmFirst, "llm"), SimpleNamespace(config=config), split).full_sort_predict(users, 0)
    ranked = rank_scores(scored.scores, users.exclude, 8)
    shares = np.minimum(1.0, 1.5 * recent)
    for row, share in zip(ranked, shares):
        assert abs(new[row].sum() - share * 8) <= 1
    assert scored.diagnostics["cold_share"] == pytest.approx(shares.mean())
    assert new[ranked[recent == 0]].sum() == 0


def test_cold_bias_is_refused_for_methods_that_cannot_score_new_items() -> None:
    with pytest.raises(LearnFeaturesError, match=r"eval.cold_bias: \['item_knn', 'id_baseline'\] do not score new items from content"):
        EvalConfig(cold_bias={"item_knn": 0.1, "id_baseline": 0.1, "learn_hybrid": 0.1})
    with pytest.raises(LearnFeaturesError, match=r"eval.cold_bias: \['bpr'\]"):
        EvalConfig(cold_bias={"bpr": 0.1})
    with pytest.raises(LearnFeaturesError, match="must be finite"):
        EvalConfig(cold_bias={"learn_hybrid": float("nan")})


def test_cold_share_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(LearnFeaturesError, match=r"eval.cold_share: \['item_knn'\] do not score new items from content"):
        EvalConfig(cold_share={"item_knn": 1.0})
    with pytest.raises(LearnFeaturesError, match=r"eval.cold_share must be finite numbers >= 0"):
        EvalConfig(cold_share={"learn_hybrid": -0.5})
    with pytest.raises(LearnFeaturesError, match=r"\['learn_hybrid'\] have both cold_bias and cold_share"):
        EvalConfig(cold_bias={"learn_hybrid": 0.1}, cold_share={"learn_hybrid": 1.0})
    with pytest.raises(LearnFeaturesError, match="eval.cold_share_window must be >= 1"):
        EvalConfig(cold_share_window=0)


class WarmFirst(VectorModel):
    """Every warm item above every new one; within each, by catalog index (1-d vectors)."""

    def vectors(self, users: EvalUsers, seed: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(len(self.split.item_ids)) / 1000
        return np.ones((len(users), 1)), np.where(self.split.warm_items, 1.0, 0.5)[:, None] + index[:, None]


class NewFirst(WarmFirst):
    """The same order within warm and new items, every new item first."""

    def vectors(self, users: EvalUsers, seed: int) -> tuple[np.ndarray, np.ndarray]:
        user_vecs, items = super().vectors(users, seed)
        return user_vecs, items + np.where(self.split.warm_items, 0.0, 1.0)[:, None]


def test_the_cold_bias_sweep_finds_the_bias_that_ranks_new_items_as_the_reference_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripts/cold_bias_sweep.py``: at bias 0 a warm-first model shows no new item; a bias
    above the gap (0.5) puts every new item first, where it finds new targets exactly as a
    new-first reference with the same order does: the smallest such bias is the pick."""
    sweep_script = load_script(monkeypatch, Path(__file__).resolve().parents[2] / "scripts" / "cold_bias_sweep.py")
    split = clustered_split()
    split.warm_items[::6] = False  # one cluster's items are new
    monkeypatch.setitem(METHODS, "warm_first", Method("warm_first", WarmFirst, "llm"))
    monkeypatch.setitem(METHODS, "new_first", Method("new_first", NewFirst, "llm"))
    prep = SimpleNamespace(config=PipelineConfig(), splits={"temporal": split})
    result = sweep_script.sweep(prep, "warm_first", "new_first", "bias", [0.0, 0.25, 0.75, 1.0], k=5)["temporal"]
    shares = [row[1] for row in result["rows"]]
    assert shares[0] == 0.0 and shares[-1] == 1.0 and shares == sorted(shares)
    new_recall = [row[4] for row in result["rows"]]
    assert new_recall[0] == 0.0 < result["reference"][2] == new_recall[2] == new_recall[3]
    assert result["matches_reference"] == 0.75


def test_the_cold_bias_sweep_reports_new_item_shares_without_reading_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--shares-only``: the same shares as the sweep's, with every test target removed."""
    sweep_script = load_script(monkeypatch, Path(__file__).resolve().parents[2] / "scripts" / "cold_bias_sweep.py")
    split = clustered_split()
    split.warm_items[::6] = False
    monkeypatch.setitem(METHODS, "warm_first", Method("warm_first", WarmFirst, "llm"))
    monkeypatch.setitem(METHODS, "new_first", Method("new_first", NewFirst, "llm"))
    biases = [0.0, 0.25, 0.75, 1.0]
    prep = SimpleNamespace(config=PipelineConfig(), splits={"temporal": split})
    swept = [row[:2] for row in sweep_script.sweep(prep, "warm_first", "new_first", "bias", biases, k=5)["temporal"]["rows"]]
    split.test.targets = [np.array([], dtype=np.int64) for _ in split.test.targets]
    rows = sweep_script.shares(prep, "warm_first", "bias", biases, k=5)["temporal"]
    assert [row[:2] for row in rows] == swept
    assert all(per_seed == [share] for _, share, per_seed in rows)  # one seed: an untrained method


def test_the_sweep_tries_the_share_rule_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--rule share``: scale 0 shows no new item, and a larger scale gives new items more of
    the top K, from the users' histories alone."""
    sweep_script = load_script(monkeypatch, Path(__file__).resolve().parents[2] / "scripts" / "cold_bias_sweep.py")
    split = clustered_split()
    split.warm_items[::7] = False  # new items spread over the clusters, so some users have them lately
    monkeypatch.setitem(METHODS, "warm_first", Method("warm_first", WarmFirst, "llm"))
    prep = SimpleNamespace(config=PipelineConfig(), splits={"temporal": split})
    shares = [share for _, share, _ in sweep_script.shares(prep, "warm_first", "share", [0.0, 1.0, 3.0], k=10)["temporal"]]
    assert shares[0] == 0.0 < shares[1] < shares[2]
    assert set(sweep_script.GRIDS) == set(RULES)  # a default grid for every rule the evaluation knows
