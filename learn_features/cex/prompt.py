"""Turning an item's catalog fields into the text the LLM reads.

A template is a Python format string over the catalog's column names, e.g.
``"Movie: {title} ({year}). Genres: {genres}. Tags: {tags}."``. The special placeholder
``{fields}`` expands to every non-empty field as ``name: value`` lines, which is what the
default template uses so that any catalog works without configuration. Empty fields render
as empty strings. The template text is part of the cache key, so changing it re-embeds.
"""

from __future__ import annotations

import string

import pandas as pd

from learn_features.errors import LearnFeaturesError

DEFAULT_TEMPLATE = "Item description for a recommender system.\n{fields}"


def template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise LearnFeaturesError(f"prompt template {template!r} is not a valid format string: {exc}") from exc


def render_prompts(catalog: pd.DataFrame, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per catalog row, in catalog order."""
    text_columns = [c for c in catalog.columns if c != "item_id"]
    unknown = [f for f in template_fields(template) if f != "fields" and f not in catalog.columns]
    if unknown:
        raise LearnFeaturesError(
            f"prompt template uses field(s) {unknown} that the catalog lacks; catalog fields: {text_columns}"
        )
    values = catalog[text_columns].astype("string").fillna("").apply(lambda col: col.str.strip())
    prompts = []
    for row in values.itertuples(index=False):
        record = dict(zip(text_columns, row))
        record["fields"] = "\n".join(f"{name}: {value}" for name, value in record.items() if value)
        prompts.append(template.format(**record))
    return prompts
