"""Labelling rules: which interactions count as positives, and which as negatives.

Interaction tables say what happened (a rating, a 0/1 label, an event type); a ranker or a
trainer needs labels. A rule states the mapping in the config, in a form small enough to be
parsed without ``eval``::

    rating >= 4
    rating <= 3
    label == 1
    event_type in ['purchase', 'cart']
    event_type not in ['view']

That is ``<column> <op> <value>`` with ``op`` one of ``>= > <= < == !=`` and a number or a
quoted string (strings only with ``==``/``!=``), or ``<column> in [...]`` / ``not in [...]``
with a list of numbers or strings. Values are read with ``ast.literal_eval``, which accepts
literals only.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError

Scalar = float | int | str
COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
RULE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<|not\s+in\b|in\b)\s*(.+?)\s*")


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LabelRule:
    """One labelling rule over one column of an interactions table, e.g. ``rating >= 4``.

    Build it with ``LabelRule.parse(text, where)`` (``where`` names the config key in error
    messages) and apply it with ``matches(table, source)``, which returns one bool per row.
    A row whose cell is empty never matches. Numbers compare numerically (a CSV's string
    cells are converted, and a cell that is not a number is an error naming the row);
    strings compare exactly.
    """

    column: str
    op: str  # a key of COMPARISONS, "in" or "not in"
    value: Scalar | tuple[Scalar, ...]
    text: str = field(compare=False)  # the rule as written, for messages

    @classmethod
    def parse(cls, text: str, where: str = "label rule") -> LabelRule:
        match = RULE.fullmatch(text)
        if match is None:
            raise LearnFeaturesError(
                f"{where}: {text!r} is not a rule like \"rating >= 4\", \"label == 1\" or \"event_type in ['purchase']\""
            )
        column, op, raw = match[1], " ".join(match[2].split()), match[3]
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise LearnFeaturesError(f"{where}: {text!r}: {raw!r} is not a number, a quoted string or a list of them") from None
        if op in ("in", "not in"):
            if not isinstance(value, (list, tuple)) or not value or not all(_is_scalar(v) for v in value):
                raise LearnFeaturesError(f"{where}: {text!r}: '{op}' needs a non-empty list of numbers or strings")
            value = tuple(value)
        elif not _is_scalar(value):
            raise LearnFeaturesError(f"{where}: {text!r}: {raw!r} is not a number or a quoted string")
        elif isinstance(value, str) and op not in ("==", "!="):
            raise LearnFeaturesError(f"{where}: {text!r}: strings compare only with == or !=")
        return cls(column, op, value, text.strip())

    @property
    def values(self) -> tuple[Scalar, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)

    def matches(self, table: pd.DataFrame, source: str) -> np.ndarray:
        """One bool per row of ``table``: does the rule hold? ``source`` names the table in errors."""
        if self.column not in table.columns:
            raise LearnFeaturesError(
                f"{source}: rule {self.text!r} reads column {self.column!r}, which is missing; found {list(table.columns)}"
            )
        cells = table[self.column]
        present = cells.notna().to_numpy()
        if all(isinstance(v, (int, float)) for v in self.values):
            column = pd.to_numeric(cells, errors="coerce")
            bad = np.flatnonzero(present & column.isna().to_numpy())
            if bad.size:
                raise LearnFeaturesError(
                    f"{source}: rule {self.text!r}: field {self.column!r} is not a number in {bad.size} row(s) "
                    f"(first: row {int(bad[0]) + 1}, {cells.iloc[int(bad[0])]!r})"
                )
            values: tuple[Scalar, ...] = self.values
        else:
            column, values = cells.astype("string"), tuple(str(v) for v in self.values)
        if self.op in COMPARISONS:
            hit = COMPARISONS[self.op](column, values[0])
        else:
            hit = column.isin(values)
            hit = ~hit if self.op == "not in" else hit
        return np.asarray(hit.fillna(False), dtype=bool) & present
