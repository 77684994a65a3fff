"""The data readers, one registered entry per ``data.source``.

Both jobs read their data through this registry: the pipeline (``training/pipeline.py``,
``prepare``) assembles the interactions and the catalog for LEARN, and the ranking report
(``ranking/loading.py``) labels the same interactions and takes item side features from the
same catalog, so the two never disagree on ids, times or rows. A reader returns validated
tables in the file's own row order; sorting and labelling belong to the job.

Adding a source is one class here, registered in ``DATA_SOURCES``, plus its test.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from learn_features.data.movielens import load_movielens_catalog, load_movielens_interactions
from learn_features.data.tables import ORDER_BY_TIME, LoadReport, read_table, validate_catalog, validate_interactions
from learn_features.errors import LearnFeaturesError

if TYPE_CHECKING:
    from learn_features.data.config import DataConfig


class DataSource(Protocol):
    """How one ``data.source`` is read."""

    def check(self, data: DataConfig) -> None:
        """Refuse, when the config loads, keys that this source needs but lacks or cannot use."""

    def paths(self, data: DataConfig) -> tuple[Path, Path | None]:
        """(interactions file, catalog file or None): what messages name and reports fingerprint."""

    def interactions(self, data: DataConfig) -> pd.DataFrame:
        """Validated interactions (``tables.validate_interactions``), in the file's row order."""

    def catalog(self, data: DataConfig, report: LoadReport, cut: pd.Timestamp | None = None) -> pd.DataFrame | None:
        """The validated catalog (None without one); merged duplicates are counted in ``report``.
        Catalog text that users wrote at or after ``cut`` (the split's cut) is left out."""

    def genres(self, data: DataConfig) -> tuple[str | None, str]:
        """(catalog column of genre-like tags or None, its separator): the rankers' multi-hot features."""


def _refuse(data: DataConfig, keys: tuple[str, ...], why: str) -> None:
    set_keys = [key for key in keys if getattr(data, key) is not None]
    if set_keys:
        raise LearnFeaturesError(f"data.{set_keys[0]} applies to data.source = 'files' only, not {data.source!r}; {why}")


class MovieLens:
    """An ml-latest-* folder: ``ratings.csv`` (interactions), ``movies.csv`` and ``tags.csv``
    (the catalog, with genres joined by ", " and the tags written before the cut)."""

    def check(self, data: DataConfig) -> None:
        _refuse(data, ("interactions", "catalog", "genres_column"), "MovieLens reads the files of data.movielens_dir")
        if data.order != ORDER_BY_TIME:
            raise LearnFeaturesError(f"data.order applies to data.source = 'files' only; MovieLens ratings are timed, got {data.order!r}")

    def paths(self, data: DataConfig) -> tuple[Path, Path | None]:
        return Path(data.movielens_dir) / "ratings.csv", Path(data.movielens_dir) / "movies.csv"

    def interactions(self, data: DataConfig) -> pd.DataFrame:
        return load_movielens_interactions(data.movielens_dir)

    def catalog(self, data: DataConfig, report: LoadReport, cut: pd.Timestamp | None = None) -> pd.DataFrame | None:
        return load_movielens_catalog(data.movielens_dir, tags_before=cut)

    def genres(self, data: DataConfig) -> tuple[str | None, str]:
        return "genres", ","


class Files:
    """LEARN's input tables (README, "Input format"): ``data.interactions`` and ``data.catalog``,
    CSV, TSV or Parquet. The ranking report can do without the catalog; LEARN cannot."""

    def check(self, data: DataConfig) -> None:
        if not data.interactions:
            raise LearnFeaturesError("data.source = 'files' needs data.interactions and data.catalog paths (the ranking report can do without the catalog)")

    def paths(self, data: DataConfig) -> tuple[Path, Path | None]:
        return Path(str(data.interactions)), None if data.catalog is None else Path(data.catalog)

    def interactions(self, data: DataConfig) -> pd.DataFrame:
        return validate_interactions(read_table(str(data.interactions)), str(data.interactions), data.order)

    def catalog(self, data: DataConfig, report: LoadReport, cut: pd.Timestamp | None = None) -> pd.DataFrame | None:
        if data.catalog is None:
            return None
        return validate_catalog(read_table(data.catalog), str(data.catalog), report)

    def genres(self, data: DataConfig) -> tuple[str | None, str]:
        return data.genres_column, data.genres_separator


DATA_SOURCES: dict[str, DataSource] = {"movielens": MovieLens(), "files": Files()}


def data_source(name: str) -> DataSource:
    """The reader of ``data.source = name``; an unknown name is refused with the choices."""
    if name not in DATA_SOURCES:
        raise LearnFeaturesError(f"data.source must be one of {list(DATA_SOURCES)}, got {name!r}")
    return DATA_SOURCES[name]
