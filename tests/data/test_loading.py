"""Loading and validating interactions and catalogs (tables.py) and the MovieLens adapter."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import MOVIELENS_DIR, needs_movielens
from learn_features.config import load_config
from learn_features.data.config import DataConfig
from learn_features.data.movielens import load_movielens_catalog, load_movielens_interactions, load_movielens_ratings
from learn_features.data.sources import DATA_SOURCES, data_source
from learn_features.data.tables import ORDER_BY_TIME, Dataset, LoadReport, assemble, read_table, validate_catalog, validate_interactions
from learn_features.errors import LearnFeaturesError

INTERACTIONS = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u2", "u2", "u3"],
        "item_id": ["a", "b", "a", "c", "b"],
        "timestamp": [1_700_000_300, 1_700_000_100, 1_700_000_200, 1_700_000_400, 1_700_000_000],
        "rating": [4.0, 3.5, 5.0, 1.0, 2.0],
        "label": [1, 0, 1, 0, 0],
    }
)
CATALOG = pd.DataFrame(
    {
        "item_id": ["a", "b", "c", "d"],
        "title": ["Alpha", "Beta", "Gamma", "Delta"],
        "description": ["first", "", "third", "fourth"],
    }
)


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def write_pair(tmp_path: Path, interactions: pd.DataFrame, catalog: pd.DataFrame, ext: str = ".csv") -> tuple[Path, Path]:
    return write(interactions, tmp_path / f"interactions{ext}"), write(catalog, tmp_path / f"catalog{ext}")


def load_files(interactions: Path, catalog: Path, order: str = ORDER_BY_TIME) -> Dataset:
    """The pipeline's reading of a ``files`` source: the registry's reader, then ``assemble``."""
    data = DataConfig(source="files", interactions=str(interactions), catalog=str(catalog), order=order)
    reader, report = data_source("files"), LoadReport()
    return assemble(reader.interactions(data), reader.catalog(data, report), str(interactions), report, order)


def load_error(tmp_path: Path, interactions: pd.DataFrame, catalog: pd.DataFrame, ext: str = ".csv") -> str:
    inter_path, cat_path = write_pair(tmp_path, interactions, catalog, ext)
    with pytest.raises(LearnFeaturesError) as info:
        load_files(inter_path, cat_path)
    return str(info.value)


# --- formats ---------------------------------------------------------------------------


def test_csv_and_parquet_load_to_the_same_dataset(tmp_path: Path) -> None:
    """Both formats give identical validated tables: str ids, UTC times, sorted by (user, time)."""
    csv_dir, pq_dir = tmp_path / "csv", tmp_path / "pq"
    csv_dir.mkdir(), pq_dir.mkdir()
    from_csv = load_files(*write_pair(csv_dir, INTERACTIONS, CATALOG, ".csv"))
    from_pq = load_files(*write_pair(pq_dir, INTERACTIONS, CATALOG, ".parquet"))

    inter = from_csv.interactions
    assert list(inter["user_id"]) == ["u1", "u1", "u2", "u2", "u3"]
    assert list(inter["item_id"]) == ["b", "a", "a", "c", "b"]  # u1 sorted by time
    assert str(inter["timestamp"].dt.tz) == "UTC"
    assert inter["timestamp"].iloc[0] == pd.Timestamp(1_700_000_100, unit="s", tz="UTC")
    assert inter["rating"].dtype == float and list(inter["label"]) == [0, 1, 1, 0, 0]
    pd.testing.assert_frame_equal(from_csv.interactions, from_pq.interactions, check_dtype=False)
    pd.testing.assert_frame_equal(
        from_csv.catalog.fillna(""), from_pq.catalog.fillna(""), check_dtype=False
    )
    for dataset in (from_csv, from_pq):
        report = dataset.report
        assert (report.interactions, report.users, report.items_in_catalog, report.items_interacted) == (5, 3, 4, 3)
        assert report.duplicate_catalog_rows_merged == 0


def test_iso_and_unix_timestamps_parse_to_the_same_utc_times(tmp_path: Path) -> None:
    """ISO-8601 strings (naive = UTC, or with an offset) and unix seconds agree."""
    iso = INTERACTIONS.copy()
    iso["timestamp"] = [
        pd.Timestamp(t, unit="s").isoformat() if i % 2 else pd.Timestamp(t, unit="s", tz="UTC").tz_convert("Europe/Paris").isoformat()
        for i, t in enumerate(INTERACTIONS["timestamp"])
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    from_iso = load_files(*write_pair(a, iso, CATALOG))
    from_unix = load_files(*write_pair(b, INTERACTIONS, CATALOG))
    pd.testing.assert_series_equal(from_iso.interactions["timestamp"], from_unix.interactions["timestamp"])


def test_parquet_native_timestamp_column_loads(tmp_path: Path) -> None:
    """A Parquet file whose timestamp column has Parquet's own timestamp type loads as those times."""
    native = INTERACTIONS.copy()
    native["timestamp"] = pd.to_datetime(INTERACTIONS["timestamp"], unit="s", utc=True)
    dataset = load_files(*write_pair(tmp_path, native, CATALOG, ".parquet"))
    expected = pd.to_datetime(INTERACTIONS["timestamp"], unit="s", utc=True).sort_values()
    assert sorted(dataset.interactions["timestamp"]) == list(expected)


def test_tsv_reads_like_csv(tmp_path: Path) -> None:
    csv_path, tsv_path = tmp_path / "i.csv", tmp_path / "i.tsv"
    INTERACTIONS.to_csv(csv_path, index=False)
    INTERACTIONS.to_csv(tsv_path, index=False, sep="\t")
    pd.testing.assert_frame_equal(read_table(tsv_path), read_table(csv_path))


def test_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    """Only .csv/.tsv/.parquet are read; anything else, or a missing file, is refused by name."""
    path = tmp_path / "interactions.json"
    INTERACTIONS.to_json(path)
    with pytest.raises(LearnFeaturesError, match=r"interactions\.json.*unsupported format '\.json'"):
        read_table(path)
    with pytest.raises(LearnFeaturesError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv")


# --- interaction errors ----------------------------------------------------------------


def test_missing_interaction_column_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, INTERACTIONS.drop(columns=["timestamp"]), CATALOG)
    assert "interactions.csv" in message and "missing required column" in message and "'timestamp'" in message


def test_missing_catalog_item_id_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, INTERACTIONS, CATALOG.rename(columns={"item_id": "id"}))
    assert "catalog.csv" in message and "'item_id'" in message and "missing required column" in message


def test_unparseable_iso_timestamp_names_field_count_row_and_value(tmp_path: Path) -> None:
    """Among ISO-8601 times, the bad values are counted and the first one is quoted with its row."""
    bad = INTERACTIONS.copy()
    bad["timestamp"] = pd.to_datetime(INTERACTIONS["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S").astype(object)
    bad.loc[2, "timestamp"] = "yesterday-ish"
    bad.loc[4, "timestamp"] = "not a time"
    message = load_error(tmp_path, bad, CATALOG)
    assert "interactions.csv" in message and "'timestamp'" in message
    assert "2 unparseable" in message and "rows 3, 5" in message and "yesterday-ish" in message


def test_unparseable_among_unix_seconds_names_the_bad_row(tmp_path: Path) -> None:
    """Among unix-second times, the error counts and locates only the bad value."""
    bad = INTERACTIONS.astype({"timestamp": object})
    bad.loc[2, "timestamp"] = "yesterday-ish"
    message = load_error(tmp_path, bad, CATALOG)
    assert "'timestamp'" in message
    assert "1 unparseable" in message and "rows 3" in message and "yesterday-ish" in message


@pytest.mark.parametrize("column", ["user_id", "item_id", "rating"])
def test_nan_in_id_or_rating_is_refused_with_row(tmp_path: Path, column: str) -> None:
    """An empty cell in user_id, item_id or rating names the field, the count and the row."""
    bad = INTERACTIONS.astype({column: object})
    bad.loc[3, column] = None
    message = load_error(tmp_path, bad, CATALOG)
    assert "interactions.csv" in message and f"'{column}'" in message
    assert "1 row(s)" in message and "rows 4" in message


def test_non_numeric_rating_is_refused(tmp_path: Path) -> None:
    bad = INTERACTIONS.astype({"rating": object})
    bad.loc[0, "rating"] = "great"
    message = load_error(tmp_path, bad, CATALOG)
    assert "'rating'" in message and "rows 1" in message


@pytest.mark.parametrize("value", [2, -1, "yes"])
def test_label_must_be_zero_or_one(tmp_path: Path, value: object) -> None:
    bad = INTERACTIONS.astype({"label": object})
    bad.loc[1, "label"] = value
    message = load_error(tmp_path, bad, CATALOG)
    assert "interactions.csv" in message and "'label'" in message and "0 or 1" in message
    assert "1 row(s)" in message and "rows 2" in message


def test_interaction_with_unknown_item_is_refused(tmp_path: Path) -> None:
    bad = INTERACTIONS.copy()
    bad.loc[[1, 3], "item_id"] = ["zzz", "yyy"]
    message = load_error(tmp_path, bad, CATALOG)
    assert "interactions.csv" in message and "absent from the catalog" in message
    assert "2 interaction(s)" in message and "rows 2, 4" in message and "'zzz'" in message


# --- catalog errors and merges -----------------------------------------------------------


def test_item_without_any_text_is_refused(tmp_path: Path) -> None:
    bad = CATALOG.copy()
    bad.loc[2, ["title", "description"]] = ["  ", None]
    message = load_error(tmp_path, INTERACTIONS, bad)
    assert "catalog.csv" in message and "no text" in message and "1 item(s)" in message
    assert "rows 3" in message and "'c'" in message and "title" in message and "description" in message


def test_duplicate_item_with_different_text_is_refused(tmp_path: Path) -> None:
    bad = pd.concat([CATALOG, pd.DataFrame({"item_id": ["b"], "title": ["Beta (other)"], "description": [""]})])
    message = load_error(tmp_path, INTERACTIONS, bad)
    assert "catalog.csv" in message and "different text" in message
    assert "item_id 'b'" in message and "rows 2, 5" in message


def test_identical_duplicate_catalog_rows_are_merged_and_counted(tmp_path: Path) -> None:
    """Exact duplicates (after trimming whitespace) collapse to one row, and the report says how many."""
    dup = pd.concat(
        [
            CATALOG,
            CATALOG.iloc[[0]],
            CATALOG.iloc[[0]].assign(title=" Alpha "),
            CATALOG.iloc[[3]],
        ],
        ignore_index=True,
    )
    dataset = load_files(*write_pair(tmp_path, INTERACTIONS, dup))
    assert dataset.report.duplicate_catalog_rows_merged == 3
    assert list(dataset.catalog["item_id"]) == ["a", "b", "c", "d"]
    assert dataset.report.items_in_catalog == 4


def test_validate_catalog_merges_a_full_copy() -> None:
    report = LoadReport()
    merged = validate_catalog(pd.concat([CATALOG, CATALOG]), "cat", report)
    assert len(merged) == 4 and report.duplicate_catalog_rows_merged == 4


def test_catalog_needs_a_text_field() -> None:
    with pytest.raises(LearnFeaturesError, match="no text fields"):
        validate_catalog(CATALOG[["item_id"]], "cat.csv")


def test_ids_are_strings_and_trimmed() -> None:
    """Integer ids and padded strings normalise to the same str id, so they join."""
    df = pd.DataFrame({"user_id": [1, " 1 "], "item_id": [7, "7"], "timestamp": [0, 1]})
    out = validate_interactions(df, "x")
    assert list(out["user_id"]) == ["1", "1"] and list(out["item_id"]) == ["7", "7"]


# --- MovieLens -------------------------------------------------------------------------


@needs_movielens
def test_movielens_catalog_parses_title_year_genres() -> None:
    catalog = load_movielens_catalog(MOVIELENS_DIR).set_index("item_id")
    movies = pd.read_csv(MOVIELENS_DIR / "movies.csv", dtype=str)
    assert len(catalog) == len(movies)
    toy = catalog.loc["1"]
    assert (toy["title"], toy["year"]) == ("Toy Story", "1995")
    assert toy["genres"] == "Adventure, Animation, Children, Comedy, Fantasy"
    # Every title that ends in "(yyyy)" lost it to the year field, and no year is invented.
    ends_with_year = movies.set_index("movieId")["title"].str.contains(r"\(\d{4}\)\s*$")
    assert (catalog["year"] != "").equals(ends_with_year.reindex(catalog.index))
    assert not catalog["title"].str.contains(r"\(\d{4}\)\s*$").any()
    no_genres = movies.loc[movies["genres"] == "(no genres listed)", "movieId"]
    assert len(no_genres) and (catalog.loc[no_genres, "genres"] == "").all()
    assert not catalog["genres"].str.contains("|", regex=False).any()


@needs_movielens
def test_movielens_interactions_label_is_rating_at_least_4() -> None:
    inter = load_movielens_interactions(MOVIELENS_DIR)
    assert len(inter) == 100_836
    assert ((inter["rating"] >= 4.0) == (inter["label"] == 1)).all()
    assert str(inter["timestamp"].dt.tz) == "UTC"


def _small_movielens(tmp_path: Path) -> Path:
    """Three movies, a few ratings, tags at known times (as strings, like the real files)."""
    directory = tmp_path / "ml"
    directory.mkdir()
    pd.DataFrame(
        {
            "movieId": [1, 2, 3],
            "title": ["Toy Story (1995)", "Untitled Thing", "Heat (1995) "],
            "genres": ["Adventure|Animation", "(no genres listed)", "Action|Crime"],
        }
    ).to_csv(directory / "movies.csv", index=False)
    pd.DataFrame(
        {"userId": [1, 1, 2], "movieId": [1, 2, 3], "rating": [4.0, 3.0, 5.0], "timestamp": [100, 200, 300]}
    ).to_csv(directory / "ratings.csv", index=False)
    pd.DataFrame(
        {
            "userId": [1, 2, 3, 1, 2, 4],
            "movieId": [1, 1, 1, 3, 3, 3],
            "tag": ["Pixar", "pixar", "early-tag", "LATE-TAG", "at-cut", "heist"],
            "timestamp": [1000, 1500, 1999, 3000, 2000, 500],
        }
    ).to_csv(directory / "tags.csv", index=False)
    return directory


def test_movielens_tags_only_before_cut(tmp_path: Path) -> None:
    """A tag at or after ``tags_before`` never reaches the item text; earlier ones do, lowercased."""
    directory = _small_movielens(tmp_path)
    cut = pd.Timestamp(2000, unit="s", tz="UTC")
    catalog = load_movielens_catalog(directory, tags_before=cut).set_index("item_id")
    assert catalog.loc["1", "tags"] == "pixar, early-tag"  # most frequent first
    assert catalog.loc["3", "tags"] == "heist"
    assert catalog.loc["2", "tags"] == ""
    assert "late-tag" not in " ".join(catalog["tags"]) and "at-cut" not in " ".join(catalog["tags"])
    assert (catalog.loc["3", "title"], catalog.loc["3", "year"]) == ("Heat", "1995")
    assert (catalog.loc["2", "title"], catalog.loc["2", "year"], catalog.loc["2", "genres"]) == ("Untitled Thing", "", "")

    everything = load_movielens_catalog(directory).set_index("item_id")
    assert set(re.split(r", ", everything.loc["3", "tags"])) == {"late-tag", "at-cut", "heist"}


def test_movielens_without_tags_file_and_missing_files(tmp_path: Path) -> None:
    directory = _small_movielens(tmp_path)
    (directory / "tags.csv").unlink()
    assert (load_movielens_catalog(directory)["tags"] == "").all()
    shutil.move(directory / "ratings.csv", directory / "ratings.bak")
    with pytest.raises(LearnFeaturesError, match=r"ratings\.csv: MovieLens file not found"):
        load_movielens_interactions(directory)


def test_movielens_ratings_file_reads_to_utc_and_needs_its_columns(tmp_path: Path) -> None:
    """The ratings reader LEARN and the ranker share: str ids, UTC times, and the file named on error."""
    path = _small_movielens(tmp_path) / "ratings.csv"
    ratings = load_movielens_ratings(path)
    assert list(ratings.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert list(ratings["item_id"]) == ["1", "2", "3"] and list(ratings["rating"]) == [4.0, 3.0, 5.0]
    assert ratings["timestamp"].iloc[0] == pd.Timestamp(100, unit="s", tz="UTC")
    pd.read_csv(path).drop(columns="rating").to_csv(path, index=False)
    with pytest.raises(LearnFeaturesError, match=r"ratings\.csv \(MovieLens ratings\): missing required column\(s\) \['rating'\]"):
        load_movielens_ratings(path)


def test_millisecond_timestamps_are_reported_not_overflowed(tmp_path: Path) -> None:
    """Unix milliseconds are out of range as seconds: a clear error by row, never an overflow."""
    bad = INTERACTIONS.astype({"timestamp": object})
    bad.loc[1, "timestamp"] = 1_700_000_000_000
    message = load_error(tmp_path, bad, CATALOG)
    assert "1 unparseable" in message and "rows 2" in message
    assert "this looks like milliseconds; unix seconds are expected, so divide by 1000" in message


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", "file is empty"),
        ("header.csv", b"user_id,item_id,timestamp\n", r"no data rows \(columns \['user_id', 'item_id', 'timestamp'\]\)"),
        ("latin1.csv", b"user_id,item_id,timestamp\n\xe9,x,1\n", "not a readable CSV file"),
        ("broken.csv", b'user_id,item_id\n"a,b\n', "not a readable CSV file"),
        ("text.parquet", b"user_id,item_id\n", "not a readable Parquet file"),
    ],
)
def test_unreadable_tables_are_refused_by_name(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    """The one table reader turns every parser failure into an error naming the file."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LearnFeaturesError, match=rf"{path.name}: {message}"):
        read_table(path)


def test_truncated_parquet_is_refused_and_an_empty_table_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    CATALOG.to_parquet(path)
    (tmp_path / "cut.parquet").write_bytes(path.read_bytes()[:-20])
    with pytest.raises(LearnFeaturesError, match=r"cut\.parquet: not a readable Parquet file"):
        read_table(tmp_path / "cut.parquet")
    CATALOG.iloc[:0].to_parquet(path)
    with pytest.raises(LearnFeaturesError, match=r"catalog\.parquet: no data rows"):
        read_table(path)
    assert list(read_table(path, allow_empty=True).columns) == list(CATALOG.columns)


# --- one data vocabulary and its readers (learn_features.data.config, learn_features.data.sources) ---


@dataclass
class Job:
    data: DataConfig = field(default_factory=DataConfig)


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("format", '"files"', "data.format was renamed data.source"),
        ("items", '"movies.csv"', "data.items was renamed data.catalog"),
        ("positive_min_rating", "4.0", 'data.positive_min_rating was replaced by the rule data.positive, e.g. positive = "rating >= 4"'),
        ("negative_max_rating", "3.0", 'data.negative_max_rating was replaced by the rule data.negative, e.g. negative = "rating <= 3"'),
    ],
)
def test_data_config_refuses_each_retired_key_with_its_new_spelling(tmp_path, key, value, hint):
    path = tmp_path / "job.toml"
    path.write_text(f"[data]\n{key} = {value}\n")
    with pytest.raises(LearnFeaturesError) as info:
        load_config(Job, path)
    assert str(info.value) == f"{path}: {hint}" or str(info.value).startswith(f"{path}: {hint} (")
    assert "\n" not in str(info.value)


def test_unknown_data_source_names_the_choices():
    with pytest.raises(LearnFeaturesError, match=re.escape(f"data.source must be one of {list(DATA_SOURCES)}, got 'movielenz'")):
        DataConfig(source="movielenz")


def test_data_sources_check_their_keys():
    with pytest.raises(LearnFeaturesError, match="data.catalog applies to data.source = 'files' only"):
        DataConfig(catalog="movies.csv")
    with pytest.raises(LearnFeaturesError, match="data.order applies to data.source = 'files' only"):
        DataConfig(order="row")
    with pytest.raises(LearnFeaturesError, match="data.source = 'files' needs data.interactions"):
        DataConfig(source="files")
    with pytest.raises(LearnFeaturesError, match=r"data.positive: 'rating => 4' is not a rule"):
        DataConfig(positive="rating => 4")


@needs_movielens
def test_movielens_reader_loads_ratings_and_the_catalog_with_tags_before_the_cut():
    data = DataConfig(movielens_dir=str(MOVIELENS_DIR))
    reader = data_source("movielens")
    assert reader.paths(data) == (MOVIELENS_DIR / "ratings.csv", MOVIELENS_DIR / "movies.csv")
    pd.testing.assert_frame_equal(reader.interactions(data), load_movielens_interactions(MOVIELENS_DIR))
    cut = pd.Timestamp("2010-01-01", tz="UTC")
    pd.testing.assert_frame_equal(reader.catalog(data, LoadReport(), cut), load_movielens_catalog(MOVIELENS_DIR, tags_before=cut))
    assert reader.genres(data) == ("genres", ",")


def test_files_reader_loads_both_tables_in_file_order_and_counts_merged_rows(tmp_path):
    shuffled = INTERACTIONS.iloc[::-1].reset_index(drop=True)
    inter_path, cat_path = write_pair(tmp_path, shuffled, pd.concat([CATALOG, CATALOG.iloc[:1]]))
    data = DataConfig(source="files", interactions=str(inter_path), catalog=str(cat_path), genres_column="genres")
    reader, report = data_source("files"), LoadReport()
    interactions = reader.interactions(data)
    assert interactions["item_id"].tolist() == shuffled["item_id"].astype(str).tolist()  # the file's order: sorting is the job's
    assert len(reader.catalog(data, report)) == len(CATALOG) and report.duplicate_catalog_rows_merged == 1
    assert reader.genres(data) == ("genres", "|")
    assert reader.catalog(DataConfig(source="files", interactions=str(inter_path)), LoadReport()) is None
