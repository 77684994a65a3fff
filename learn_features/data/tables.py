"""Reading and validating the two inputs: an interactions table and an item catalog.

Formats (CSV, TSV or Parquet, chosen by file extension):
- interactions: ``user_id``, ``item_id``, ``timestamp`` (unix seconds or ISO-8601), optional
  ``rating``, ``label`` (0/1) and ``event_type``. Sequence-only data (no timestamps) gives its
  order instead: a position column or the file's row order (``data.order``);
- catalog: ``item_id`` plus any text fields (title, category, brand, price, keywords,
  attributes, description, tags, ...).

Every problem is reported with the file, the field, how many rows are affected and the
first offending row (1-based data row, header excluded), and no row is ever dropped silently:
the pipeline either refuses the input or counts what it merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from learn_features.atomic import atomic_path
from learn_features.errors import LearnFeaturesError

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ID_COLUMNS = ("user_id", "item_id")
#: ``data.order`` values besides a column name: events ordered by time, or as the file lists them.
ORDER_BY_TIME, ORDER_BY_ROW = "timestamp", "row"
OPTIONAL_INTERACTION_COLUMNS = ("rating", "label", "event_type")
MAX_UNIX_SECONDS = 9.2e9  # pandas' nanosecond timestamps end in 2262
FINER_UNITS = (("milliseconds", 1_000), ("microseconds", 1_000_000), ("nanoseconds", 1_000_000_000))


@dataclass
class LoadReport:
    """Counts the user sees after loading, so nothing merged or skipped goes unnoticed."""

    interactions: int = 0
    users: int = 0
    items_in_catalog: int = 0
    items_interacted: int = 0
    duplicate_catalog_rows_merged: int = 0
    notes: list[str] = field(default_factory=list)


def read_table(path: str | Path, allow_empty: bool = False) -> pd.DataFrame:
    """A CSV/TSV (every cell a string, so ids like ``007`` stay exact) or Parquet table.

    The one reader of user tables, so that every command refuses an unreadable file the same
    way: an empty file, a header with no rows (unless ``allow_empty``), a truncated or
    non-Parquet ``.parquet`` or bad text encoding is an error naming the file, never a
    traceback from the parser.
    """
    path = Path(path)
    if not path.exists():
        raise LearnFeaturesError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=True)
        except pd.errors.EmptyDataError:
            raise LearnFeaturesError(f"{path}: file is empty (expected a header row and data rows)") from None
        except (ValueError, OSError) as exc:  # ParserError, UnicodeDecodeError, a directory, ...
            raise LearnFeaturesError(f"{path}: not a readable {suffix[1:].upper()} file: {exc}") from None
    elif suffix in (".parquet", ".pq"):
        df = read_parquet(path).to_pandas()
    else:
        raise LearnFeaturesError(f"{path}: unsupported format {suffix!r}; use .csv, .tsv or .parquet")
    if df.empty and not allow_empty:
        raise LearnFeaturesError(f"{path}: no data rows (columns {list(df.columns)})")
    return df


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file as an Arrow table; a truncated or non-Parquet file is an error naming it."""
    path = Path(path)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise LearnFeaturesError(f"{path}: not a readable Parquet file (truncated or another format?): {exc}") from None


def write_item_list(path: str | Path, item_ids: list[str]) -> None:
    """A list of items as one ``item_id`` string column (a run's ID-part and warm items, a
    publication's warm items), written atomically; ``read_item_list`` reads it back."""
    with atomic_path(Path(path)) as tmp:
        pq.write_table(pa.table({"item_id": pa.array(item_ids, pa.string())}), tmp)


def read_item_list(path: str | Path) -> frozenset[str]:
    """The ids of a ``write_item_list`` file."""
    return frozenset(str(i) for i in read_parquet(path, columns=["item_id"]).column(0).to_pylist())


def _first_rows(mask: np.ndarray | pd.Series, limit: int = 5) -> str:
    rows = np.flatnonzero(np.asarray(mask)) + 1
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (", ..." if rows.size > limit else "")


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], source: str) -> None:
    """Refuse a table without ``columns``, listing what it has (a misnamed header is the usual cause)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LearnFeaturesError(f"{source}: missing required column(s) {missing}; found {list(df.columns)}")


def _reject_empty(df: pd.DataFrame, column: str, source: str) -> None:
    values = df[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise LearnFeaturesError(
            f"{source}: field {column!r} is empty or NaN in {int(empty.sum())} row(s) (rows {_first_rows(empty)})"
        )


def parse_timestamps(values: pd.Series, source: str, column: str = "timestamp") -> pd.Series:
    """Unix seconds, ISO-8601 strings or a native timestamp column to UTC; naive times are UTC.

    Each value is parsed on its own merits (numbers as unix seconds, the rest as ISO), so one
    bad value is reported as itself instead of sending the whole column down the wrong path.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    else:
        as_number = pd.to_numeric(values, errors="coerce")
        parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        # Only numbers that can be unix seconds (before year 2262, nanosecond range) are
        # converted: a millisecond timestamp or a stray huge value stays NaT and is reported
        # below by row, instead of overflowing inside pandas.
        seconds = as_number.abs() < MAX_UNIX_SECONDS
        if seconds.any():
            parsed[seconds] = pd.to_datetime(as_number[seconds], unit="s", utc=True)
        textual = as_number.isna() & values.notna()
        if textual.any():
            parsed[textual] = pd.to_datetime(values[textual], utc=True, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise LearnFeaturesError(
            f"{source}: field {column!r} has {int(bad.sum())} unparseable value(s) "
            f"(rows {_first_rows(bad)}; first value {values.iloc[first]!r}){_unit_hint(values.iloc[first])}"
        )
    return parsed


def _unit_hint(value: object) -> str:
    """Why a number failed as unix seconds when it is a finer unit (the usual export mistake)."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if pd.isna(number) or abs(number) < MAX_UNIX_SECONDS:
        return ""
    for unit, factor in FINER_UNITS:
        if abs(number) / factor < MAX_UNIX_SECONDS:
            return f": this looks like {unit}; unix seconds are expected, so divide by {factor}"
    return ""


def validate_interactions(df: pd.DataFrame, source: str, order: str = ORDER_BY_TIME) -> pd.DataFrame:
    """Normalise types (ids to str, timestamp to UTC) and reject rows that cannot be used.

    ``order`` says how each user's events are sequenced: by ``timestamp`` (required then), by
    the file's ``row`` order, or by a named numeric position column. Sequence-only data gets a
    ``position`` column (the row order, or that column) and, where it has them, UTC
    ``timestamp`` values (NaT otherwise); ``assemble`` turns either into one ``order``.
    """
    timed = order == ORDER_BY_TIME or "timestamp" in df.columns
    required = INTERACTION_COLUMNS if order == ORDER_BY_TIME else ID_COLUMNS + (() if order == ORDER_BY_ROW else (order,))
    require_columns(df, required, source)
    df = df.reset_index(drop=True)
    for column in required:
        _reject_empty(df, column, source)
    out = pd.DataFrame(
        {
            "user_id": df["user_id"].astype(str).str.strip(),
            "item_id": df["item_id"].astype(str).str.strip(),
            "timestamp": parse_timestamps(df["timestamp"], source) if timed else pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]"),
        }
    )
    if order == ORDER_BY_ROW:
        out["position"] = np.arange(len(df), dtype=np.float64)
    elif order != ORDER_BY_TIME:
        position = pd.to_numeric(df[order], errors="coerce")
        if position.isna().any():
            raise LearnFeaturesError(
                f"{source}: field {order!r} (data.order) is not a number in {int(position.isna().sum())} row(s) "
                f"(rows {_first_rows(position.isna())})"
            )
        out["position"] = position.astype(np.float64)
    if "rating" in df.columns:
        rating = pd.to_numeric(df["rating"], errors="coerce")
        if rating.isna().any():
            raise LearnFeaturesError(
                f"{source}: field 'rating' is NaN or not a number in {int(rating.isna().sum())} row(s) "
                f"(rows {_first_rows(rating.isna())})"
            )
        out["rating"] = rating.astype(float)
    if "label" in df.columns:
        label = pd.to_numeric(df["label"], errors="coerce")
        bad = ~label.isin([0, 1])
        if bad.any():
            raise LearnFeaturesError(
                f"{source}: field 'label' must be 0 or 1; {int(bad.sum())} row(s) are not (rows {_first_rows(bad)})"
            )
        out["label"] = label.astype(int)
    if "event_type" in df.columns:
        out["event_type"] = df["event_type"].astype(str)
    return out


def validate_catalog(df: pd.DataFrame, source: str, report: LoadReport | None = None) -> pd.DataFrame:
    """Item ids to str; identical duplicate rows are merged (and counted), conflicting ones refused."""
    require_columns(df, ("item_id",), source)
    df = df.reset_index(drop=True)
    _reject_empty(df, "item_id", source)
    df = df.copy()
    df["item_id"] = df["item_id"].astype(str).str.strip()
    text_columns = [c for c in df.columns if c != "item_id"]
    if not text_columns:
        raise LearnFeaturesError(f"{source}: catalog has no text fields besides 'item_id'")
    text = df[text_columns].astype("string").fillna("").apply(lambda col: col.str.strip())
    empty = (text == "").all(axis=1)
    if empty.any():
        raise LearnFeaturesError(
            f"{source}: {int(empty.sum())} item(s) have no text in any of {text_columns} "
            f"(rows {_first_rows(empty)}; first item_id {df['item_id'][empty].iloc[0]!r})"
        )
    duplicated_id = df["item_id"].duplicated(keep=False)
    if duplicated_id.any():
        signature = df["item_id"] + "\x1f" + text.apply("\x1f".join, axis=1)
        conflicting = df.loc[duplicated_id].assign(sig=signature[duplicated_id]).groupby("item_id")["sig"].nunique()
        conflicting = conflicting[conflicting > 1]
        if len(conflicting):
            first = conflicting.index[0]
            rows = _first_rows(df["item_id"] == first)
            raise LearnFeaturesError(
                f"{source}: {len(conflicting)} item_id(s) appear more than once with different text "
                f"(first: item_id {first!r} at rows {rows})"
            )
        exact = df["item_id"].duplicated(keep="first")
        if report is not None:
            report.duplicate_catalog_rows_merged += int(exact.sum())
        df = df.loc[~exact].reset_index(drop=True)
    return df


def check_items_in_catalog(interactions: pd.DataFrame, catalog: pd.DataFrame, source: str) -> None:
    unknown = ~interactions["item_id"].isin(set(catalog["item_id"]))
    if unknown.any():
        examples = interactions.loc[unknown, "item_id"].unique()[:5].tolist()
        raise LearnFeaturesError(
            f"{source}: {int(unknown.sum())} interaction(s) refer to item_id(s) absent from the catalog "
            f"(rows {_first_rows(unknown)}; e.g. {examples})"
        )


@dataclass
class Dataset:
    """Validated inputs, ready for splitting: interactions sorted by (user, time)."""

    interactions: pd.DataFrame
    catalog: pd.DataFrame
    report: LoadReport


def assemble(
    interactions: pd.DataFrame, catalog: pd.DataFrame, interactions_source: str, report: LoadReport, order: str = ORDER_BY_TIME
) -> Dataset:
    """Checked, sorted inputs; ``order`` numbers every event in its user's sequence order
    (time, then item id, for timed data; the position otherwise), the one order every
    protocol reads."""
    check_items_in_catalog(interactions, catalog, interactions_source)
    keys = ["user_id", "timestamp", "item_id"] if order == ORDER_BY_TIME else ["user_id", "position"]
    interactions = interactions.sort_values(keys, kind="stable").reset_index(drop=True)
    interactions["order"] = np.arange(len(interactions), dtype=np.int64)
    report.interactions = len(interactions)
    report.users = interactions["user_id"].nunique()
    report.items_in_catalog = len(catalog)
    report.items_interacted = interactions["item_id"].nunique()
    return Dataset(interactions=interactions, catalog=catalog, report=report)
