"""The retrieval tables: target subsets, paired differences to every reference, the paired
columns, and the published figures shown beside ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learn_features.data.split import EvalUsers, Split, TrainSequence
from learn_features.errors import LearnFeaturesError
from learn_features.retrieval import per_user_scores, rank_scores
from training.config import EvalConfig
from training.evaluation import (
    COLD_GALLERY, MethodRankings, metrics_markdown, paired_columns, protocol_metrics, rank_among_cold, target_subsets, user_tables,
)
from training.published import read_published

ROOT = Path(__file__).resolve().parents[2]
HEADER = "method,split,ndcg@10,recall@10,ndcg@50,recall@50,source\n"


def _split() -> Split:
    """Items 0-7 have training events (item 4 a non-positive one only), 8 and 9 none.
    Positive training counts: 0:5, 1:1, 2:1, 3:3, 4:0, 5:2, 6:1, 7:4."""
    items = [0] * 5 + [1, 2, 3, 3, 3, 4, 5, 5, 6, 7, 7, 7, 7]
    positive = np.ones(len(items), bool)
    positive[items.index(4)] = False
    train = {"u": TrainSequence(np.array(items), positive, np.zeros(len(items), np.int64))}
    test = EvalUsers(["a", "b", "c"], targets=[np.array([1, 2, 8]), np.array([4, 9]), np.array([0])])
    warm = np.arange(10) < 8
    return Split("leave_one_out", None, [f"i{k}" for k in range(10)], train, EvalUsers(), test, {}, warm, None)


def _as_lists(subsets: dict[str, list[np.ndarray]]) -> dict[str, list[list[int]]]:
    return {name: [t.tolist() for t in targets] for name, targets in subsets.items()}


def test_target_subsets_split_targets_into_warm_tail_and_cold() -> None:
    split = _split()
    # 25% of the 8 warm items is 2: item 4 (no positive), then item 1 of the three items with one
    # positive (1, 2, 6), ties broken by catalog index.
    assert _as_lists(target_subsets(split, split.test, 0.25)) == {
        "all": [[1, 2, 8], [4, 9], [0]],
        "warm_items": [[1, 2], [4], [0]],
        "tail_items": [[1], [4], []],
        "cold_items": [[8], [9], []],
        "cold_gallery": [[8], [9], []],
    }
    # Half of the warm items: 4, 1, 2, 6 (the fewest positives), not 5 (two) or 0, 3, 7.
    assert _as_lists(target_subsets(split, split.test, 0.5))["tail_items"] == [[1, 2], [4], []]


def test_cold_targets_are_also_ranked_against_the_cold_items_alone() -> None:
    """A model that puts every warm item first finds no cold target in the full gallery; among
    the cold items alone its order of them is what counts."""
    split = _split()
    subsets = target_subsets(split, split.test, 0.25)
    warm_first = np.where(split.warm_items, 10.0, 0.0) + np.arange(10) / 100  # cold items: 8 < 9
    scores = np.tile(warm_first, (3, 1))
    exclude = [np.array([9]), np.array([], np.int64), np.array([], np.int64)]
    ranked = rank_among_cold(scores, exclude, split.warm_items, subsets[COLD_GALLERY], depth=5)
    assert ranked.tolist() == [[8, -1, -1, -1, -1], [9, 8, -1, -1, -1], [-1] * 5]  # user 2 has no cold target
    assert per_user_scores(ranked, subsets[COLD_GALLERY], [1])["recall@1"].tolist() == [1.0, 1.0]
    full = rank_scores(scores, exclude, 5)
    assert per_user_scores(full, subsets["cold_items"], [5])["recall@5"].tolist() == [0.0, 0.0]
    assert scores[0, 8] == warm_first[8]  # the method's scores are not changed


def test_paired_columns_are_r10_n10_r50_where_the_cutoffs_have_them() -> None:
    assert paired_columns([10, 20, 50]) == ["recall@10", "ndcg@10", "recall@50"]
    assert paired_columns([10, 100, 200]) == ["recall@10", "ndcg@10", "recall@100"]  # the headline stands in for R@50
    assert paired_columns([50, 100]) == ["recall@50"]
    assert paired_columns([5, 20]) == ["recall@20", "ndcg@20"]


def _rankings() -> tuple[list[MethodRankings], dict[str, list[np.ndarray]]]:
    """Three methods over 40 users of a 30-item catalog, one target each, two seeds."""
    rng = np.random.default_rng(0)
    targets = [np.array([k % 30]) for k in range(40)]
    cold = [t if k % 4 == 0 else t[:0] for k, t in enumerate(targets)]
    rankings = [MethodRankings(name, [np.argsort(rng.random((40, 30)), axis=1)[:, :10] for _ in range(2)])
                for name in ("learn_v1", "id_baseline", "popularity")]
    return rankings, {"all": targets, "warm_items": targets, "tail_items": cold, "cold_items": cold, COLD_GALLERY: cold}


def test_every_method_is_paired_against_each_reference_but_itself() -> None:
    rankings, subsets = _rankings()
    tables = user_tables(rankings, subsets, [5, 10])
    metrics = protocol_metrics(rankings, tables, [5, 10], 50, ["learn_v1", "popularity"])
    assert set(metrics["learn_v1"]["paired"]) == {"popularity"}
    assert set(metrics["popularity"]["paired"]) == {"learn_v1"}
    assert set(metrics["id_baseline"]["paired"]) == {"learn_v1", "popularity"}
    for subset in ("warm_items", "tail_items", "cold_items"):
        assert metrics["id_baseline"][subset]["users"] == (40 if subset == "warm_items" else 10)
        assert set(metrics["id_baseline"][subset]["paired"]) == {"learn_v1", "popularity"}
    mine, reference = (tables["cold_items"][name]["recall@10"].mean(axis=0) for name in ("id_baseline", "popularity"))
    paired = metrics["id_baseline"]["cold_items"]["paired"]["popularity"]["recall@10"]
    assert paired["delta"] == pytest.approx((mine - reference).mean())
    assert paired["ci95"][0] <= paired["delta"] <= paired["ci95"][1]


def _markdown(protocol: str, ks: list[int], references: list[str], published: list | None = None, diagnostics: dict | None = None) -> str:
    rankings, subsets = _rankings()
    for ranking in rankings:
        ranking.diagnostics = (diagnostics or {}).get(ranking.name, {})
    methods = protocol_metrics(rankings, user_tables(rankings, subsets, ks), ks, 20, references)
    split = {"cut_time": None, "test_users": 40, "test_targets": 40, "test_cold_targets": 10, "val_users": 0,
             "items": 30, "warm_items": 30, "train_users": 5, "train_events": 50}
    block = {"split": split, "users": 40, "seeds": [0, 1], "references": references, "tail_share": 0.2, "methods": methods}
    return metrics_markdown({protocol: block}, ks, "test", published)


def test_metrics_markdown_has_a_table_per_subset_and_paired_tables_per_reference() -> None:
    lines = _markdown("temporal", [10, 20, 50], ["learn_v1", "popularity"]).splitlines()
    headings = [line for line in lines if line.startswith("### ")]
    assert headings[:9] == [
        "### All target items",
        "### Paired difference to learn_v1",
        "### Paired difference to popularity",
        "### Warm target items (the item has a training event)",
        "### Warm target items: paired difference to learn_v1",
        "### Warm target items: paired difference to popularity",
        "### Tail target items (the 20% of warm items with the fewest training positives)",
        "### Tail target items: paired difference to learn_v1",
        "### Tail target items: paired difference to popularity",
    ]
    assert "### Cold-start target items: paired difference to popularity" in headings
    paired = lines.index("### Paired difference to popularity")
    assert lines[paired + 2] == "| method | Δrecall@10 | Δndcg@10 | Δrecall@50 |"
    rows = lines[paired + 4 : paired + 6]
    assert [row.split(" | ")[0] for row in rows] == ["| learn_v1", "| id_baseline"]  # the reference has no row
    assert "Published on this data" not in "\n".join(lines)


def test_published_figures_follow_the_leave_one_out_all_targets_table(tmp_path: Path) -> None:
    path = tmp_path / "published.csv"
    path.write_text(HEADER + "VQ-Rec,same,0.0643,0.1211,,,the README\nLEARN,other,0.1060,0.1594,,,another README\n")
    published = read_published(path)
    lines = _markdown("leave_one_out", [10, 50], ["learn_v1"], published).splitlines()
    start = lines.index("### Published on this data")
    assert lines.index("### All target items") < start < lines.index("### Paired difference to learn_v1")
    assert "rows on another split (LEARN)" in lines[start + 2] and "not comparable" in lines[start + 2]
    assert lines[start + 6 : start + 8] == [
        "| VQ-Rec | same | 0.0643 | 0.1211 |  |  | the README |",
        "| LEARN | other | 0.1060 | 0.1594 |  |  | another README |",
    ]
    # Published figures are leave-one-out figures: the temporal table does not show them.
    assert "### Published on this data" not in _markdown("temporal", [10, 50], ["learn_v1"], published)


def test_the_shipped_published_figures_read(tmp_path: Path) -> None:
    rows = read_published(ROOT / "data" / "amazon-scientific" / "published.csv")
    assert [(r.method, r.split) for r in rows][0] == ("VQ-Rec", "same")
    assert read_published(tmp_path / "published.csv") == []  # no file: no figures


@pytest.mark.parametrize(
    ("body", "texts"),
    [
        ("VQ-Rec,same,0.0643,12.11,,,src\n", ["row 1", "'recall@10'", "fraction", "12.11"]),
        ("VQ-Rec,same,0.0643,0.1211,,,src\nX,elsewhere,0.1,,,,src\n", ["row 2", "'split'", "'elsewhere'"]),
        ("VQ-Rec,same,0.06x,,,,src\n", ["row 1", "'ndcg@10'", "not a number"]),
        (",same,0.0643,,,,src\n", ["row 1", "'method'", "empty"]),
        ("VQ-Rec,same,0.0643,,,,\n", ["row 1", "'source'", "empty"]),
        ("VQ-Rec,same,,,,,src\n", ["row 1", "no figure"]),
    ],
)
def test_a_malformed_published_file_is_refused_naming_file_row_and_field(tmp_path: Path, body: str, texts: list[str]) -> None:
    path = tmp_path / "published.csv"
    path.write_text(HEADER + body)
    with pytest.raises(LearnFeaturesError) as error:
        read_published(path)
    for text in [str(path), *texts]:
        assert text in str(error.value)


def test_a_published_file_with_other_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "published.csv"
    path.write_text("method,split,ndcg@10,recall@10,source\nVQ-Rec,same,0.0643,0.1211,src\n")
    with pytest.raises(LearnFeaturesError, match="missing required column"):
        read_published(path)
    path.write_text(HEADER.strip() + ",hit@10\nVQ-Rec,same,0.0643,0.1211,,,src,0.2\n")
    with pytest.raises(LearnFeaturesError, match=r"unknown column\(s\) \['hit@10'\]"):
        read_published(path)


def test_references_must_be_evaluated_methods_and_the_tail_a_share() -> None:
    with pytest.raises(LearnFeaturesError, match=r"eval.references .*\['learn_v1'\] not evaluated"):
        EvalConfig(methods=["popularity", "item_knn"])
    with pytest.raises(LearnFeaturesError, match="eval.references must be distinct"):
        EvalConfig(references=["learn_v1", "learn_v1"])
    assert EvalConfig(methods=["popularity", "item_knn"], references=["popularity"]).references == ["popularity"]
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(LearnFeaturesError, match="eval.tail_share must be in"):
            EvalConfig(tail_share=share)


def test_the_diagnostics_table_says_how_each_method_ranked_new_items() -> None:
    vectors = {"dim": 8, "item_mean_cosine": 0.5, "item_effective_rank": 4.0, "user_mean_cosine": 0.4,
               "user_effective_rank": 5.0, "popularity_spearman": 0.3}
    diagnostics = {"learn_v1": {**vectors, "cold_bias": 0.04}, "popularity": {**vectors, "cold_share": 0.125}, "id_baseline": vectors}
    lines = _markdown("temporal", [10], ["learn_v1"], diagnostics=diagnostics).splitlines()
    header = next(line for line in lines if line.startswith("| method | item mean cos"))
    assert header.endswith("| new-item rule |")
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith(("| learn_v1 | 0.500", "| popularity | 0.500", "| id_baseline | 0.500"))}
    assert rows["| learn_v1"].endswith("| bias 0.04 |") and rows["| id_baseline"].endswith("| none |")
    assert rows["| popularity"].endswith("| share, 12.5% of slots on average |")
