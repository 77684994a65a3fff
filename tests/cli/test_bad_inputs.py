"""Every CLI entry point over a table of bad files and configs.

One finished job (the tiny random decoder of core_fixtures, a few seconds), published,
applied and materialized into a repo copy, is made once for the module. Each row then runs
one command through ``learn_features.cli.main`` with one bad input and asserts that it
exits 2, that the message names the file (or the flag) and what is wrong, and that every
file of the finished job, its cache and the published repo is byte-identical afterwards: a
refused command must never corrupt or lose earlier output.

A row is a function that writes its bad file(s) into the test's tmp_path and returns
(argv, the texts the error message must contain).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from core_fixtures import files_in, tiny_llm_dir  # noqa: F401  (pytest fixture)
from feast_fixtures import copy_repo
from job_fixtures import write_config, write_synthetic

from learn_features.cli import main
from learn_features.embeddings_io import ITEM_FILE, USER_FILE
from learn_features.store.publish import publish_run
from learn_features.store.repo import apply_repo, open_store


@dataclass(frozen=True)
class World:
    """The module's finished job and published repo, plus the inputs they were made from."""

    root: Path
    config: Path
    interactions: Path
    catalog: Path
    run: Path
    repo: Path

    def snapshot(self) -> dict[str, str]:
        """sha256 of every file under the root: the job's inputs, run, cache and repo."""
        return {str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files_in(self.root)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> Iterator[World]:  # noqa: F811
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad_inputs")
    interactions, catalog = write_synthetic(root)
    config = write_config(root, interactions, catalog, tiny_llm_dir)
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    repo = copy_repo(root / "repo")
    assert main(["publish", "--run-dir", str(root / "run"), "--repo", str(repo), "-q"]) == 0
    apply_repo(open_store(repo), repo)
    assert main(["materialize", "--repo", str(repo), "-q"]) == 0
    yield World(root, config, interactions, catalog, root / "run", repo)
    torch.set_num_threads(threads)


def run_cli(argv: list[str]) -> int:
    """``main``'s exit code; argparse's own refusals (unknown flags) raise SystemExit(2)."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


Case = Callable[[World, Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {}


def case(func: Case) -> Case:
    CASES[func.__name__.replace("_", "-")] = func
    return func


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def interactions(w: World) -> pd.DataFrame:
    return pd.read_csv(w.interactions, dtype=str)


def pipeline(command: str, w: World, *options: str) -> list[str]:
    """A pipeline command on the finished job's config (and so on its run folder)."""
    return [command, "--config", str(w.config), "--quiet", *options]


def with_data(command: str, w: World, key: str, path: Path) -> list[str]:
    return pipeline(command, w, "--set", f"data.{key}={json.dumps(str(path))}")


def truncated(source: Path, dest: Path) -> Path:
    dest.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return dest


def run_copy(w: World, tmp: Path, files: tuple[str, ...] = ("manifest.json", USER_FILE, ITEM_FILE)) -> Path:
    """A run folder holding copies of the finished run's embedding files (for publish/report rows)."""
    (tmp / "run" / "embeddings").mkdir(parents=True)
    for name in files:
        shutil.copy(w.run / "embeddings" / name, tmp / "run" / "embeddings" / name)
    return tmp / "run"


# --- data files: extract and run, on the finished job's run folder -----------------------


@case
def extract_empty_csv(w: World, tmp: Path):
    bad = write(tmp / "interactions.csv", "")
    return with_data("extract", w, "interactions", bad), [str(bad), "file is empty"]


@case
def run_header_only_csv(w: World, tmp: Path):
    bad = write(tmp / "interactions.csv", "user_id,item_id,timestamp\n")
    return with_data("run", w, "interactions", bad), [str(bad), "no data rows"]


@case
def extract_truncated_parquet_catalog(w: World, tmp: Path):
    bad = truncated(w.catalog, tmp / "catalog.parquet")
    return with_data("extract", w, "catalog", bad), [str(bad), "not a readable Parquet file"]


@case
def run_csv_named_parquet(w: World, tmp: Path):
    bad = write(tmp / "catalog.parquet", "item_id,title\nsku-1,x\n")
    return with_data("run", w, "catalog", bad), [str(bad), "not a readable Parquet file"]


@case
def extract_millisecond_timestamps(w: World, tmp: Path):
    df = interactions(w)
    df["timestamp"] = (df["timestamp"].astype("int64") * 1000).astype(str)
    df.to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("extract", w, "interactions", bad), [str(bad), "'timestamp'", "looks like milliseconds", "divide by 1000"]


@case
def extract_unparseable_timestamp(w: World, tmp: Path):
    df = interactions(w)
    df.loc[3, "timestamp"] = "yesterday"
    df.to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("extract", w, "interactions", bad), [str(bad), "'timestamp'", "unparseable", "rows 4", "'yesterday'"]


@case
def extract_missing_column(w: World, tmp: Path):
    interactions(w).drop(columns=["item_id"]).to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("extract", w, "interactions", bad), [str(bad), "missing required column(s) ['item_id']"]


@case
def run_nan_user_id(w: World, tmp: Path):
    df = interactions(w)
    df.loc[7, "user_id"] = None
    df.to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("run", w, "interactions", bad), [str(bad), "'user_id'", "empty or NaN", "rows 8"]


@case
def run_malformed_published_figures(w: World, tmp: Path):
    shutil.copy(w.interactions, data := tmp / "interactions.csv")
    bad = write(tmp / "published.csv", "method,split,ndcg@10,recall@10,ndcg@50,recall@50,source\n"
                "VQ-Rec,same,0.0643,0.1211,,,README\nSASRec,theirs,0.0797,0.1305,,,README\n")
    return with_data("run", w, "interactions", data), [str(bad), "row 2", "'split'", "'theirs'"]


@case
def extract_item_missing_from_catalog(w: World, tmp: Path):
    df = interactions(w)
    df.loc[0, "item_id"] = "no-such-sku"
    df.to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("extract", w, "interactions", bad), [str(bad), "absent from the catalog", "no-such-sku"]


@case
def run_label_not_binary(w: World, tmp: Path):
    interactions(w).assign(label="2").to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("run", w, "interactions", bad), [str(bad), "'label'", "0 or 1"]


@case
def extract_non_numeric_rating(w: World, tmp: Path):
    interactions(w).assign(rating="five").to_csv(bad := tmp / "interactions.csv", index=False)
    return with_data("extract", w, "interactions", bad), [str(bad), "'rating'", "not a number"]


@case
def extract_catalog_conflicting_duplicate(w: World, tmp: Path):
    catalog = pd.read_parquet(w.catalog)
    pd.concat([catalog, catalog.iloc[[2]].assign(title="other text")]).to_parquet(bad := tmp / "catalog.parquet")
    return with_data("extract", w, "catalog", bad), [str(bad), "different text", "sku-2"]


@case
def extract_catalog_without_text(w: World, tmp: Path):
    pd.read_parquet(w.catalog)[["item_id"]].to_parquet(bad := tmp / "catalog.parquet")
    return with_data("extract", w, "catalog", bad), [str(bad), "no text fields"]


@case
def extract_unsupported_extension(w: World, tmp: Path):
    bad = write(tmp / "interactions.json", "[]")
    return with_data("extract", w, "interactions", bad), [str(bad), "unsupported format '.json'"]


@case
def extract_missing_file(w: World, tmp: Path):
    bad = tmp / "nowhere.csv"
    return with_data("extract", w, "interactions", bad), [str(bad), "file not found"]


@case
def run_not_utf8(w: World, tmp: Path):
    bad = tmp / "interactions.csv"
    bad.write_bytes(b"user_id,item_id,timestamp\n\xff\xfe,sku-1,1600000000\n")
    return with_data("run", w, "interactions", bad), [str(bad), "not a readable CSV file"]


# --- configs ----------------------------------------------------------------------------


@case
def train_unknown_key(w: World, tmp: Path):
    bad = write(tmp / "job.toml", "[train]\nlearning_rate = 0.1\n")
    return ["train", "--config", str(bad)], [str(bad), "learning_rate"]


@case
def train_wrong_type(w: World, tmp: Path):
    bad = write(tmp / "job.toml", w.config.read_text() + '\n[eval]\nbootstrap_rounds = "many"\n')
    return ["train", "--config", str(bad), "--quiet"], [str(bad), "eval.bootstrap_rounds", "expected int"]


@case
def extract_invalid_toml(w: World, tmp: Path):
    bad = write(tmp / "job.toml", "[train\nlr = 1\n")
    return ["extract", "--config", str(bad)], [str(bad), "invalid TOML"]


@case
def run_missing_config(w: World, tmp: Path):
    return ["run", "--config", str(tmp / "none.toml")], [str(tmp / "none.toml"), "config file not found"]


@case
def extract_files_source_without_paths(w: World, tmp: Path):
    bad = write(tmp / "job.toml", '[data]\nsource = "files"\n')
    return ["extract", "--config", str(bad)], [str(bad), "data.interactions and data.catalog"]


# (id, command, --set override, texts the message must hold; "{config}" is the job's config
# file). Each override parses as TOML and is refused by a check: at config load, or by the
# stage before it writes anything.
OVERRIDES = [
    ("unknown-method", "evaluate", 'eval.methods=["learn_v9"]', ["{config}", "eval.methods", "learn_v9"]),
    ("no-methods", "run", "eval.methods=[]", ["{config}", "eval.methods is empty"]),
    ("reference-not-evaluated", "evaluate", 'eval.methods=["popularity"]', ["{config}", "eval.references", "['learn_v1'] not evaluated"]),
    ("tail-share-above-1", "evaluate", "eval.tail_share=1.5", ["{config}", "eval.tail_share", "1.5"]),
    ("duplicate-ks", "evaluate", "eval.ks=[10, 10]", ["{config}", "eval.ks", "[10, 10]"]),
    ("zero-k", "evaluate", "eval.ks=[0, 50]", ["{config}", "eval.ks", "[0, 50]"]),
    ("unknown-select-metric", "train", 'train.select_metric="auc@50"', ["{config}", "train.select_metric", "auc@50"]),
    ("select-metric-at-0", "train", 'train.select_metric="recall@0"', ["{config}", "train.select_metric", "recall@0"]),
    ("untrained-primary", "embed", 'eval.primary_method="llm_frozen"', ["{config}", "eval.primary_method", "llm_frozen"]),
    ("max-len-below-history", "train", "model.max_len=2", ["{config}", "model.max_len"]),
    ("unknown-pooling", "extract", 'llm.pooling="max"', ["{config}", "pooling", "'max'"]),
    ("negative-lr", "run", "train.lr=-1", ["{config}", "train.lr"]),
    ("template-field-not-in-catalog", "extract", 'llm.prompt_template="{no_such_field}"', ["no_such_field", "catalog fields"]),
    ("missing-model-folder", "extract", 'llm.model="/nonexistent/model"', ["/nonexistent/model", "does not exist"]),
    ("content-of-other-template", "evaluate", 'llm.prompt_template="{title}"', ["content/llm", "other llm settings (prompt_template)"]),
]


def _override_case(command: str, override: str, texts: list[str]) -> Case:
    return lambda w, tmp: (pipeline(command, w, "--set", override), [t.replace("{config}", str(w.config)) for t in texts])


for _id, _command, _override, _texts in OVERRIDES:
    CASES[f"{_command}-set-{_id}"] = _override_case(_command, _override, _texts)


@case
def train_unknown_method(w: World, tmp: Path):
    return pipeline("train", w, "--method", "learn_v7"), ["unknown method", "learn_v7"]


@case
def train_override_without_value(w: World, tmp: Path):
    return pipeline("train", w, "--set", "train.lr"), ["'train.lr'", "section.key=value"]


# --- run folders ------------------------------------------------------------------------


@case
def embed_truncated_checkpoint(w: World, tmp: Path):
    shutil.copytree(w.run, tmp / "run")
    best = tmp / "run" / "models" / "temporal" / "learn_v1" / "seed0" / "best.pt"
    truncated(w.run / "models" / "temporal" / "learn_v1" / "seed0" / "best.pt", best)
    return pipeline("embed", w, "--run-dir", str(tmp / "run")), [str(best), "refused to load this checkpoint"]


@case
def evaluate_nonexistent_run_dir(w: World, tmp: Path):
    missing = tmp / "no-run"
    return pipeline("evaluate", w, "--run-dir", str(missing)), [str(missing), "not found"]


@case
def evaluate_truncated_content_index(w: World, tmp: Path):
    shutil.copytree(w.run, tmp / "run")
    index = tmp / "run" / "content" / "llm" / "index.json"
    truncated(w.run / "content" / "llm" / "index.json", index)
    return pipeline("evaluate", w, "--run-dir", str(tmp / "run")), [str(index), "unreadable content store index"]


@case
def train_missing_content_store(w: World, tmp: Path):
    shutil.copytree(w.run, tmp / "run", ignore=shutil.ignore_patterns("content"))
    return pipeline("train", w, "--run-dir", str(tmp / "run")), [str(tmp / "run" / "content"), "run `learn-features extract` first"]


# --- publish ----------------------------------------------------------------------------


def publish(w: World, run: Path, *options: str) -> list[str]:
    return ["publish", "--run-dir", str(run), "--repo", str(w.repo), *options]


@case
def publish_truncated_embeddings(w: World, tmp: Path):
    run = run_copy(w, tmp)
    truncated(w.run / "embeddings" / ITEM_FILE, run / "embeddings" / ITEM_FILE)
    return publish(w, run), [str(run / "embeddings" / ITEM_FILE), "not a readable Parquet file"]


@case
def publish_zero_users(w: World, tmp: Path):
    run = run_copy(w, tmp)
    path = run / "embeddings" / USER_FILE
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    return publish(w, run), [str(path), "no user rows"]


@case
def publish_zero_items(w: World, tmp: Path):
    run = run_copy(w, tmp)
    path = run / "embeddings" / ITEM_FILE
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    return publish(w, run), [str(path), "no item rows"]


@case
def publish_missing_embedding_column(w: World, tmp: Path):
    run = run_copy(w, tmp)
    path = run / "embeddings" / USER_FILE
    pq.write_table(pq.read_table(path).drop(["model_version"]), path)
    return publish(w, run), [str(path), "missing column(s) ['model_version']"]


@case
def publish_truncated_manifest(w: World, tmp: Path):
    run = run_copy(w, tmp)
    truncated(w.run / "embeddings" / "manifest.json", run / "embeddings" / "manifest.json")
    return publish(w, run), [str(run / "embeddings" / "manifest.json"), "not valid JSON"]


@case
def publish_manifest_dim_not_a_number(w: World, tmp: Path):
    run = run_copy(w, tmp)
    path = run / "embeddings" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dim": "eight"}))
    return publish(w, run), [str(path), "'dim'", "int"]


@case
def publish_nonexistent_run(w: World, tmp: Path):
    return publish(w, tmp / "nope"), [str(tmp / "nope" / "embeddings" / "manifest.json"), "run manifest not found"]


@case
def publish_event_time_not_a_time(w: World, tmp: Path):
    return publish(w, run_copy(w, tmp), "--event-time", "last tuesday"), ["--event-time 'last tuesday'", "not an ISO timestamp"]


@case
def publish_event_time_without_zone(w: World, tmp: Path):
    return publish(w, run_copy(w, tmp), "--event-time", "2030-01-01T00:00:00"), ["2030-01-01T00:00:00", "no timezone"]


@case
def publish_event_time_before_the_live_one(w: World, tmp: Path):
    run = run_copy(w, tmp)  # the same vectors under another version: a new publication, not a no-op
    for name in (USER_FILE, ITEM_FILE):
        table = pq.read_table(path := run / "embeddings" / name)
        pq.write_table(table.set_column(3, "model_version", pa.array(["v-next"] * table.num_rows)), path)
    manifest = run / "embeddings" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model_version": "v-next"}))
    return publish(w, run, "--event-time", "as-of"), ["not after the latest publication", "move forward in time"]


@case
def publish_replay_with_event_time(w: World, tmp: Path):
    return publish(w, w.run, "--replay", "--event-time", "now-ish"), ["--replay", "drop --event-time"]


# --- embed-items ------------------------------------------------------------------------


def embed_items(w: World, tmp: Path, catalog: Path, *options: str) -> list[str]:
    return ["embed-items", "--run-dir", str(w.run), "--catalog", str(catalog), "--output", str(tmp / "out.parquet"), "-q", *options]


@case
def embed_items_empty_catalog(w: World, tmp: Path):
    bad = write(tmp / "new.csv", "")
    return embed_items(w, tmp, bad), [str(bad), "file is empty"]


@case
def embed_items_header_only_catalog(w: World, tmp: Path):
    bad = write(tmp / "new.csv", "item_id,title,category\n")
    return embed_items(w, tmp, bad), [str(bad), "no data rows"]


@case
def embed_items_truncated_parquet(w: World, tmp: Path):
    bad = truncated(w.catalog, tmp / "new.parquet")
    return embed_items(w, tmp, bad), [str(bad), "not a readable Parquet file"]


@case
def embed_items_without_item_id(w: World, tmp: Path):
    bad = write(tmp / "new.csv", "sku,title\nx,y\n")
    return embed_items(w, tmp, bad), [str(bad), "missing required column(s) ['item_id']"]


@case
def embed_items_manifest_with_bad_encoder(w: World, tmp: Path):
    run = run_copy(w, tmp)
    path = run / "embeddings" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "encoder": {**manifest["encoder"], "pooling": "max"}}))
    catalog = write(tmp / "new.csv", "item_id,title,category\nnew-1,A film,drama\n")
    return ["embed-items", "--run-dir", str(run), "--catalog", str(catalog), "--output", str(tmp / "o.parquet")], [str(path), "pooling"]


@case
def embed_items_feast_yaml_as_config(w: World, tmp: Path):
    catalog = write(tmp / "new.csv", "item_id,title,category\nnew-1,A film,drama\n")
    return embed_items(w, tmp, catalog, "--push", "--config", "feature_store.yaml"), ["unrecognized arguments: --config"]


@case
def embed_items_nothing_to_do(w: World, tmp: Path):
    catalog = write(tmp / "new.csv", "item_id,title,category\nnew-1,A film,drama\n")
    return ["embed-items", "--run-dir", str(w.run), "--catalog", str(catalog)], ["nothing to do", "--push"]


# --- verify-online and materialize -------------------------------------------------------


def copied_repo(w: World, tmp: Path) -> Path:
    """The published repo copied with its data and registry, so its registry names the old folder."""
    return Path(shutil.copytree(w.repo, tmp / "copied"))


@case
def verify_online_sample_zero(w: World, tmp: Path):
    return ["verify-online", "--repo", str(w.repo), "--sample", "0"], ["--sample must be at least 1"]


@case
def verify_online_missing_feature_store_yaml(w: World, tmp: Path):
    return ["verify-online", "--repo", str(w.repo), "-f", "feature_store.nope.yaml"], [str(w.repo / "feature_store.nope.yaml"), "Feast config not found"]


@case
def verify_online_nonexistent_repo(w: World, tmp: Path):
    return ["verify-online", "--repo", str(tmp / "repo")], [str(tmp / "repo"), "Feast repo folder not found"]


@case
def verify_online_nothing_published(w: World, tmp: Path):
    repo = copy_repo(tmp / "fresh")
    return ["verify-online", "--repo", str(repo)], [str(repo), "nothing is published"]


@case
def verify_online_copied_repo(w: World, tmp: Path):
    repo = copied_repo(w, tmp)
    return ["verify-online", "--repo", str(repo)], [f"registry points at {w.repo.resolve()}", f"run `feast apply` in {repo.resolve()}"]


@case
def materialize_copied_repo(w: World, tmp: Path):
    repo = copied_repo(w, tmp)
    return ["materialize", "--repo", str(repo)], [f"registry points at {w.repo.resolve()}", "run `feast apply`"]


@case
def materialize_bad_end(w: World, tmp: Path):
    return ["materialize", "--repo", str(w.repo), "--end", "soon"], ["--end 'soon'", "not an ISO-8601 time"]


@case
def materialize_nothing_published(w: World, tmp: Path):
    repo = copy_repo(tmp / "fresh")
    return ["materialize", "--repo", str(repo)], [str(repo), "nothing is published"]


@case
def materialize_before_feast_apply(w: World, tmp: Path):
    repo = copy_repo(tmp / "fresh")
    publish_run(w.run, repo)
    return ["materialize", "--repo", str(repo)], [str(repo / "feature_store.yaml"), "run `feast apply` in the repo first"]


@case
def materialize_invalid_feature_store_yaml(w: World, tmp: Path):
    repo = copied_repo(w, tmp)
    write(repo / "feature_store.bad.yaml", "project: learn_features\nonline_store:\n  type: no-such-store\n")
    return ["materialize", "--repo", str(repo), "-f", "feature_store.bad.yaml"], [str(repo / "feature_store.bad.yaml"), "cannot load Feast config"]


@case
def materialize_corrupt_ledger(w: World, tmp: Path):
    repo = copied_repo(w, tmp)
    apply_repo(open_store(repo), repo)
    ledger = write(repo / "data" / "materialized.json", '{"stores": ')
    return ["materialize", "--repo", str(repo)], [str(ledger), "unreadable materialization ledger", "--full"]


# --- report -----------------------------------------------------------------------------


def ranking_config(tmp: Path, data: str, extra: str = "") -> Path:
    return write(tmp / "ranking.toml", f'models = ["lgbm_baseline"]\n[data]\n{data}\n[embeddings]\nsource = "none"\n{extra}')


def report(config: Path, tmp: Path) -> list[str]:
    return ["report", "--config", str(config), "--out", str(tmp / "report"), "-q"]


@case
def report_empty_interactions(w: World, tmp: Path):
    bad = write(tmp / "events.csv", "")
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{bad}"\npositive = "label == 1"')
    return report(config, tmp), [str(bad), "file is empty"]


@case
def report_header_only_movielens_ratings(w: World, tmp: Path):
    bad = write(tmp / "ratings.csv", "userId,movieId,rating,timestamp\n")
    return report(ranking_config(tmp, f'movielens_dir = "{tmp}"\npositive = "rating >= 4"'), tmp), [str(bad), "no data rows"]


@case
def report_millisecond_timestamps(w: World, tmp: Path):
    df = interactions(w)
    df["timestamp"] = (df["timestamp"].astype("int64") * 1000).astype(str)
    df.assign(label="1").to_csv(bad := tmp / "events.csv", index=False)
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{bad}"\npositive = "label == 1"')
    return report(config, tmp), [str(bad), "looks like milliseconds"]


@case
def report_label_rule_not_a_rule(w: World, tmp: Path):
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{w.interactions}"\npositive = "label = 1"')
    return report(config, tmp), [str(config), "data.positive", "'label = 1' is not a rule"]


@case
def report_label_rule_on_missing_column(w: World, tmp: Path):
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{w.interactions}"\ncatalog = "{w.catalog}"\npositive = "rating >= 4"')
    return report(config, tmp), [str(w.interactions), "'rating >= 4'", "column 'rating', which is missing"]


@case
def report_files_format_without_positive_rule(w: World, tmp: Path):
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{w.interactions}"')
    return report(config, tmp), [str(config), "data.positive"]


@case
def report_interactions_with_movielens_source(w: World, tmp: Path):
    config = ranking_config(tmp, f'interactions = "{w.interactions}"\npositive = "rating >= 4"')
    return report(config, tmp), [str(config), "data.interactions applies to data.source = 'files' only"]


@case
def report_retired_data_key(w: World, tmp: Path):
    config = ranking_config(tmp, f'format = "files"\ninteractions = "{w.interactions}"\npositive = "label == 1"')
    return report(config, tmp), [str(config), "data.format was renamed data.source"]


@case
def report_unknown_key(w: World, tmp: Path):
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{w.interactions}"\npositive = "label == 1"', "[split]\ncut_quantil = 0.9\n")
    return report(config, tmp), [str(config), "cut_quantil"]


@case
def report_wrong_type(w: World, tmp: Path):
    config = ranking_config(tmp, f'source = "files"\ninteractions = "{w.interactions}"\npositive = "label == 1"', '[split]\ncut_quantile = "high"\n')
    return report(config, tmp), [str(config), "split.cut_quantile", "expected float"]


@case
def report_truncated_run_manifest(w: World, tmp: Path):
    run = run_copy(w, tmp)
    truncated(w.run / "embeddings" / "manifest.json", run / "embeddings" / "manifest.json")
    interactions(w).assign(label="1").to_csv(events := tmp / "events.csv", index=False)
    config = write(
        tmp / "ranking.toml",
        f'models = ["lgbm_baseline", "lgbm_learn"]\n[data]\nsource = "files"\ninteractions = "{events}"\npositive = "label == 1"\n'
        f'[embeddings]\nsource = "parquet"\nrun_dir = "{run}"\nexpected_model_version = "run"\n',
    )
    return report(config, tmp), [str(run / "embeddings" / "manifest.json"), "not valid JSON"]


@case
def embed_users_without_times(w: World, tmp: Path):
    return pipeline("embed-users", w, "--repo", str(w.repo)), ["embed-users", "--as-of T", "--every"]


@case
def embed_users_bad_interval(w: World, tmp: Path):
    argv = pipeline("embed-users", w, "--from", "as-of", "--to", "end", "--every", "weekly", "--repo", str(w.repo))
    return argv, ["--every 'weekly'", "interval"]


@case
def embed_users_bad_time(w: World, tmp: Path):
    return pipeline("embed-users", w, "--as-of", "yesterday-ish", "--repo", str(w.repo)), ["--as-of", "'yesterday-ish'", "ISO-8601"]


@case
def train_popularity_recent_without_timestamps(w: World, tmp: Path):
    events = interactions(w).drop(columns="timestamp")
    events.to_csv(bad := tmp / "sequences.csv", index=False)
    argv = with_data("train", w, "interactions", bad) + [
        "--set", 'data.order="row"', "--set", 'split.protocols=["leave_one_out"]',
        "--set", 'eval.methods=["learn_v1", "popularity_recent"]', "--set", 'eval.primary_method="learn_v1"',
    ]
    return argv, [str(bad), "popularity_recent", "no timestamps"]


@case
def embed_users_in_the_future(w: World, tmp: Path):
    return pipeline("embed-users", w, "--as-of", "2999-01-01", "--repo", str(w.repo)), ["--as-of 2999-01-01", "in the future"]


@case
def embed_users_into_a_repo_with_nothing_published(w: World, tmp: Path):
    empty = copy_repo(tmp / "empty-repo")
    return pipeline("embed-users", w, "--as-of", "end", "--repo", str(empty)), [str(empty), "nothing is published"]


@case
def stream_users_events_without_timestamp(w: World, tmp: Path):
    events = write(tmp / "events.csv", "user_id,item_id\nu1,sku-3\n")
    return pipeline("stream-users", w, "--repo", str(w.repo), "--events", str(events)), [str(events), "timestamp"]


@case
def stream_users_events_with_millisecond_times(w: World, tmp: Path):
    events = write(tmp / "events.csv", "user_id,item_id,timestamp\nu1,sku-3,1600000000000\n")
    return pipeline("stream-users", w, "--repo", str(w.repo), "--events", str(events)), [str(events), "looks like milliseconds"]


COMMANDS = (  # a longer name first: "embed-users-..." rows belong to embed-users, not embed
    "embed-items", "embed-users", "stream-users", "verify-online", "materialize", "evaluate", "extract", "publish", "report",
    "embed", "train", "run",
)


def test_the_table_covers_every_command() -> None:
    covered = {next((c for c in COMMANDS if name.startswith(f"{c}-")), None) for name in CASES}
    assert covered == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_naming_the_file_and_leaves_earlier_outputs(
    world: World, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected = CASES[name](world, tmp_path)
    before = world.snapshot()
    capsys.readouterr()
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    missing = [text for text in expected if text not in err]
    assert not missing, f"message lacks {missing}:\n{err}"
    assert world.snapshot() == before, "a refused command changed an earlier output"


class RunsCodeOnLoad:
    """A pickle payload that creates ``marker`` when unpickled (what a hostile run folder would ship)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_malicious_checkpoint_is_refused_and_never_executed(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder from someone else: its manifest's checkpoint, best.pt and last.pt each carry
    a __reduce__ payload. embed-items, embed, evaluate and a training resume refuse them all."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": RunsCodeOnLoad(marker)}, evil)
    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    manifest = run / "embeddings" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "checkpoint": str(evil)}))
    for name in ("best.pt", "last.pt"):
        shutil.copy(evil, run / "models" / "temporal" / "learn_v1" / "seed0" / name)
    catalog = write(tmp_path / "new.csv", "item_id,title,category\nnew-1,A film,drama\n")
    before = {str(p): p.read_bytes() for p in files_in(run)}

    commands = {
        "embed-items": (["embed-items", "--run-dir", str(run), "--catalog", str(catalog), "--output", str(tmp_path / "o.parquet")], evil),
        "embed": (pipeline("embed", world, "--run-dir", str(run)), run / "models" / "temporal" / "learn_v1" / "seed0" / "best.pt"),
        # evaluate trains what is missing first (eval.seeds), so it reads the resume checkpoint first
        "evaluate": (pipeline("evaluate", world, "--run-dir", str(run)), run / "models" / "temporal" / "learn_v1" / "seed0" / "last.pt"),
        "train (resume)": (pipeline("train", world, "--run-dir", str(run), "--method", "learn_v1"), run / "models" / "temporal" / "learn_v1" / "seed0" / "last.pt"),
    }
    for command, (argv, path) in commands.items():
        capsys.readouterr()
        assert run_cli(argv) == 2, command
        err = capsys.readouterr().err
        assert f"{path}: refused to load this checkpoint" in err and "io.open" in err, (command, err)
        assert not marker.exists(), f"{command} ran the checkpoint's code"
    assert {str(p): p.read_bytes() for p in files_in(run)} == before  # config.json and split.json included

    # Control: the payload is live; a full unpickle (the old weights_only=False) runs it.
    torch.load(evil, weights_only=False)["state_dict"].close()
    assert marker.exists()
