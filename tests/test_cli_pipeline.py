"""End to end through the CLI: `learn-features run` on a small synthetic catalog with a tiny
random decoder, then the properties a user relies on: every method evaluated, embeddings
that honour the Parquet contract, idempotent re-runs, cold-start item embeddings, and exit
code 2 with a precise message on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from core_fixtures import tiny_llm_dir  # noqa: F401  (pytest fixture)

from learn_features.cli import main
from learn_features.embeddings_io import ITEM_FILE, USER_FILE, read_frame, read_run_manifest
from learn_features.pch.inference import embed_catalog_items
from training.methods import METHODS

GENRES = ["space opera", "romantic comedy", "crime thriller", "nature documentary"]


def write_synthetic(root: Path, users: int = 48, items: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Users each favour one genre; the first half is active only before the cut, the rest on both sides."""
    rng = np.random.default_rng(seed)
    catalog = pd.DataFrame(
        {
            "item_id": [f"sku-{i}" for i in range(items)],
            "title": [f"{GENRES[i % 4].title()} number {i}" for i in range(items)],
            "category": [GENRES[i % 4] for i in range(items)],
        }
    )
    rows = []
    for u in range(users):
        genre = u % 4
        pool = [i for i in range(items) if i % 4 == genre]
        start, end = (0, 70) if u < users // 2 else (30, 100)
        for day, item in zip(np.sort(rng.uniform(start, end, 10)), rng.choice(pool, 10, replace=False)):
            rows.append({"user_id": f"u{u}", "item_id": f"sku-{item}", "timestamp": int(1_600_000_000 + day * 86400)})
    catalog_path, interactions_path = root / "catalog.parquet", root / "interactions.csv"
    catalog.to_parquet(catalog_path)
    pd.DataFrame(rows).to_csv(interactions_path, index=False)
    return interactions_path, catalog_path


def write_config(root: Path, interactions: Path, catalog: Path, model_dir: Path) -> Path:
    config = root / "job.toml"
    config.write_text(
        f"""
run_dir = "{root / 'run'}"
cache_dir = "{root / 'cache'}"
[data]
source = "files"
interactions = "{interactions}"
catalog = "{catalog}"
[split]
cut_quantile = 0.6
history_len = 8
target_len = 4
val_fraction = 0.2
[llm]
model = "{model_dir}"
chunk_size = 16
[text_encoder]
model = "{model_dir}"
pooling = "last"
[model]
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
d_out = 8
max_len = 8
[train]
lr = 3e-3
epochs = 2
batch_size = 8
"""
    )
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llm_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("job")
    interactions, catalog = write_synthetic(root)
    config = write_config(root, interactions, catalog, tiny_llm_dir)
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    return root, config


def test_run_evaluates_every_method_with_cold_item_breakdown(finished_run):
    root, _ = finished_run
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert set(metrics) == set(METHODS)
    for name, values in metrics.items():
        for key in ("recall@50", "ndcg@50", "hit@10", "recall@200"):
            assert 0.0 <= values[key] <= 1.0, (name, key)
        assert values["users"] > 0
        assert "cold_items" in values and "recall@50" in values["cold_items"]
    table = (root / "run" / "metrics.md").read_text()
    assert all(f"| {name} |" in table for name in METHODS)


def test_published_embeddings_follow_the_contract(finished_run):
    root, _ = finished_run
    manifest = read_run_manifest(root / "run")
    users = read_frame(root / "run" / "embeddings" / USER_FILE, "user")
    items = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    assert len(items) == 64 and users["user_id"].str.startswith("u").all()
    assert set(users["model_version"]) == set(items["model_version"]) == {manifest["model_version"]}
    assert {len(v) for v in items["embedding"]} == {manifest["dim"]} == {8}
    assert str(items["event_timestamp"].dt.tz) == "UTC"


def test_rerun_is_idempotent(finished_run):
    root, config = finished_run
    before = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    shards = sorted((root / "cache").rglob("shard-*.npz"))
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    after = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    assert sorted((root / "cache").rglob("shard-*.npz")) == shards, "a re-run must not re-embed cached items"
    assert (before["model_version"] == after["model_version"]).all()
    np.testing.assert_array_equal(np.stack(before["embedding"]), np.stack(after["embedding"]))


def test_cold_start_item_gets_an_embedding_from_text_alone(finished_run):
    root, _ = finished_run
    new_items = pd.DataFrame({"item_id": ["brand-new"], "title": ["Space Opera number 999"], "category": ["space opera"]})
    table = embed_catalog_items(root / "run", new_items, device="cpu")
    manifest = read_run_manifest(root / "run")
    assert table.ids == ["brand-new"] and table.model_version == manifest["model_version"]
    assert table.vectors.shape == (1, manifest["dim"]) and np.isfinite(table.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, rtol=1e-5)


def test_bad_input_exits_2_naming_file_and_field(tmp_path, capsys, tiny_llm_dir):  # noqa: F811
    interactions, catalog = write_synthetic(tmp_path)
    pd.read_csv(interactions).drop(columns=["timestamp"]).to_csv(interactions, index=False)
    config = write_config(tmp_path, interactions, catalog, tiny_llm_dir)
    assert main(["extract", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(interactions) in err and "timestamp" in err


def test_unknown_config_key_exits_2(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlearning_rate = 0.1\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "learning_rate" in err


@pytest.mark.parametrize("command", ["extract", "train", "embed", "evaluate", "run"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_embed_items_reproduces_the_published_vector_of_a_catalog_row(finished_run, tmp_path):
    """`embed-items` on a row of the run's own catalog CSV gives the vector `embed` published:
    same reader (cells stay strings), same prompt, same fp16 content rounding."""
    root, _ = finished_run
    catalog = pd.read_parquet(root / "catalog.parquet")
    row = tmp_path / "row.csv"
    catalog.iloc[[5]].to_csv(row, index=False)
    out = tmp_path / "vec.parquet"
    assert main(["embed-items", "--run-dir", str(root / "run"), "--catalog", str(row), "--output", str(out)]) == 0
    item = catalog["item_id"].iloc[5]
    published = read_frame(root / "run" / "embeddings" / ITEM_FILE, "item")
    want = published.loc[published["item_id"] == item, "embedding"].iloc[0]
    got = read_frame(out, "item")["embedding"].iloc[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
