"""Published figures on the same data, shown beside ours in ``metrics.md``.

A benchmark row means little without the figures it is read against, and a figure measured
on another split of the same data (other preprocessing, other items) is easily quoted as if
it were comparable. So the figures live in the data folder, as ``published.csv`` beside the
interactions file, and travel with the data: running the same config on another category's
folder shows that category's figures, or none. Each row says whether it is on the ``same``
split as our leave-one-out table or on an ``other`` one, and ``metrics.md`` says so plainly.

``published.csv``: ``method``, ``split`` (``same`` / ``other``), ``ndcg@10``, ``recall@10``,
``ndcg@50``, ``recall@50`` (a blank cell where the source gives no figure), ``source`` (where
the figure was read, for a reader to check). A malformed file is refused naming the file, the
row (1-based data row) and the field, when the data loads, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from learn_features.data.config import DataConfig
from learn_features.data.sources import data_source
from learn_features.data.tables import read_table, require_columns
from learn_features.errors import LearnFeaturesError

PUBLISHED_FILE = "published.csv"
METRICS = ("ndcg@10", "recall@10", "ndcg@50", "recall@50")
COLUMNS = ("method", "split", *METRICS, "source")
#: ``split`` values: measured on our leave-one-out split, or on another split of the same data.
SPLITS = ("same", "other")


@dataclass(frozen=True)
class PublishedRow:
    method: str
    split: str  # one of SPLITS
    values: dict[str, float | None]  # METRICS -> figure, None where not published
    source: str


def published_path(data: DataConfig) -> Path:
    """Where the data set's published figures are: ``published.csv`` beside its interactions file."""
    return data_source(data.source).paths(data)[0].parent / PUBLISHED_FILE


def read_published(path: Path) -> list[PublishedRow]:
    """The rows of ``path``, in file order; none when the file does not exist."""
    if not path.exists():
        return []
    table = read_table(path, allow_empty=True)
    require_columns(table, COLUMNS, str(path))
    extra = [c for c in table.columns if c not in COLUMNS]
    if extra:
        raise LearnFeaturesError(f"{path}: unknown column(s) {extra}; the columns are {list(COLUMNS)}")
    return [_row(path, number, record) for number, record in enumerate(table.to_dict("records"), start=1)]


def _row(path: Path, number: int, record: dict[str, object]) -> PublishedRow:
    where = f"{path}: row {number}"
    text = {c: "" if pd.isna(record[c]) else str(record[c]).strip() for c in COLUMNS}
    for column in ("method", "source"):
        if not text[column]:
            raise LearnFeaturesError(f"{where}: field {column!r} is empty")
    if text["split"] not in SPLITS:
        raise LearnFeaturesError(f"{where}: field 'split' must be one of {list(SPLITS)}, got {text['split']!r}")
    values = {metric: _figure(where, metric, text[metric]) for metric in METRICS}
    if all(value is None for value in values.values()):
        raise LearnFeaturesError(f"{where}: no figure in any of {list(METRICS)}")
    return PublishedRow(text["method"], text["split"], values, text["source"])


def _figure(where: str, metric: str, text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise LearnFeaturesError(f"{where}: field {metric!r} is not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # a percentage (12.11 for 0.1211) is the usual slip
        raise LearnFeaturesError(f"{where}: field {metric!r} must be a fraction in [0, 1], got {text!r}")
    return value


def published_markdown(rows: list[PublishedRow]) -> list[str]:
    """The "Published on this data" section of a leave-one-out protocol (no lines without rows)."""
    if not rows:
        return []
    lines = [
        "### Published on this data",
        "",
        "From the data folder's `published.csv`: full ranking, as published. Rows on the same split are "
        "comparable with the table above;",
    ]
    other = [row.method for row in rows if row.split == "other"]
    if other:
        lines[-1] += (f" rows on another split ({', '.join(other)}) were measured on another split of the same data "
                      "(other preprocessing and items) and are not comparable number for number.")
    else:
        lines[-1] += " every row here is on the same split."
    lines += ["", "| method | split | " + " | ".join(METRICS) + " | source |", "|---|---|" + "---|" * len(METRICS) + "---|"]
    for row in rows:
        cells = ["" if row.values[m] is None else f"{row.values[m]:.4f}" for m in METRICS]
        lines.append(f"| {row.method} | {row.split} | " + " | ".join(cells) + f" | {row.source} |")
    return lines + [""]
