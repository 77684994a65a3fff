"""Adapter for the MovieLens ``ml-latest-*`` files (movies.csv, ratings.csv, tags.csv).

Genres and user tags are folded into the item text. Tags are themselves user behaviour with
timestamps, so only tags applied before ``tags_before`` (the split's cut time) are used: a
tag written after the cut would leak post-cut information into cold-start items' text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from learn_features.data.tables import parse_timestamps, read_table, require_columns, validate_catalog, validate_interactions
from learn_features.errors import LearnFeaturesError

YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")
MAX_TAGS_PER_ITEM = 12
RATING_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def _require(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.exists():
        raise LearnFeaturesError(f"{path}: MovieLens file not found (expected {name} in {directory})")
    return path


def load_movielens_ratings(path: str | Path) -> pd.DataFrame:
    """A MovieLens ratings file as ``user_id``, ``item_id``, ``timestamp`` (UTC), ``rating``.

    The one reader of ratings for both LEARN and the ranking experiment, so the two never
    disagree on ids or times; each labels the ratings its own way.
    """
    path = Path(path)
    raw = read_table(path)
    require_columns(raw, RATING_COLUMNS, f"{path} (MovieLens ratings)")
    return validate_interactions(raw.rename(columns={"userId": "user_id", "movieId": "item_id"}), str(path))


def load_movielens_interactions(directory: str | Path) -> pd.DataFrame:
    """ratings.csv as the generic interactions schema; rating >= 4 is a positive label."""
    interactions = load_movielens_ratings(_require(Path(directory), "ratings.csv"))
    interactions["label"] = (interactions["rating"] >= 4.0).astype(int)
    return interactions


def _movie_tags(directory: Path, tags_before: pd.Timestamp | None) -> pd.Series:
    path = directory / "tags.csv"
    if not path.exists():
        return pd.Series(dtype=str)
    raw = read_table(path, allow_empty=True)
    require_columns(raw, ("movieId", "tag", "timestamp"), f"{path} (MovieLens tags)")
    tags = raw.rename(columns={"movieId": "item_id"})
    tags["timestamp"] = parse_timestamps(tags["timestamp"], str(path))
    if tags_before is not None:
        tags = tags[tags["timestamp"] < tags_before]
    tags["tag"] = tags["tag"].astype(str).str.strip().str.lower()
    tags = tags[tags["tag"] != ""]
    counts = tags.groupby(["item_id", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("item_id").head(MAX_TAGS_PER_ITEM)
    return top.groupby("item_id")["tag"].agg(", ".join)


def load_movielens_catalog(directory: str | Path, tags_before: pd.Timestamp | None = None) -> pd.DataFrame:
    """movies.csv to a catalog with title, year, genres and (pre-cut) tags."""
    directory = Path(directory)
    path = _require(directory, "movies.csv")
    raw = read_table(path)
    require_columns(raw, ("movieId", "title", "genres"), f"{path} (MovieLens movies)")
    movies = raw.rename(columns={"movieId": "item_id"})
    title = movies["title"].fillna("").astype(str)
    year = title.str.extract(YEAR_SUFFIX)[0].fillna("")
    genres = movies["genres"].fillna("").astype(str).str.replace("(no genres listed)", "", regex=False)
    catalog = pd.DataFrame(
        {
            "item_id": movies["item_id"].astype(str).str.strip(),
            "title": title.str.replace(YEAR_SUFFIX, "", regex=True).str.strip(),
            "year": year,
            "genres": genres.str.replace("|", ", ", regex=False),
        }
    )
    catalog["tags"] = catalog["item_id"].map(_movie_tags(directory, tags_before)).fillna("")
    return validate_catalog(catalog, str(path))

