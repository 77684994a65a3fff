"""Labelling rules: parsed without eval, applied per row, refused with the rule and the row named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from learn_features.data.labels import LabelRule
from learn_features.errors import LearnFeaturesError

EVENTS = pd.DataFrame(
    {
        "rating": ["4.5", "3.5", None, "1"],  # as a CSV reads it: strings
        "label": [1, 0, 1, 0],
        "event_type": ["purchase", "view", None, "cart"],
    }
)


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("rating >= 4", [True, False, False, False]),
        ("rating<=3.5", [False, True, False, True]),
        ("rating > 1", [True, True, False, False]),
        ("rating < 1", [False, False, False, False]),
        ("label == 1", [True, False, True, False]),
        ("label != 1", [False, True, False, True]),
        ("label in [0]", [False, True, False, True]),
        ("event_type in ['purchase', 'cart']", [True, False, False, True]),
        ('event_type == "view"', [False, True, False, False]),
        ("event_type not  in ['view']", [True, False, False, True]),  # an empty cell matches nothing
    ],
)
def test_rules_match_row_by_row(rule: str, expected: list[bool]) -> None:
    assert LabelRule.parse(rule).matches(EVENTS, "events.csv").tolist() == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("rating => 4", "is not a rule like"),
        ("__import__('os').system('touch x') == 1", "is not a rule like"),
        ("rating >= os.getcwd()", "is not a number, a quoted string or a list of them"),
        ("rating >= [1, 2]", "is not a number or a quoted string"),
        ("rating >= True", "is not a number or a quoted string"),
        ("event_type >= 'cart'", "strings compare only with == or !="),
        ("event_type in []", "needs a non-empty list"),
        ("event_type in 'cart'", "needs a non-empty list"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(LearnFeaturesError, match=rf"^data\.positive: .*{message}"):
        LabelRule.parse(text, "data.positive")


def test_a_rule_on_a_missing_or_non_numeric_column_names_the_file_and_row() -> None:
    with pytest.raises(LearnFeaturesError, match=r"events\.csv: rule 'score >= 1' reads column 'score', which is missing"):
        LabelRule.parse("score >= 1").matches(EVENTS, "events.csv")
    with pytest.raises(LearnFeaturesError, match=r"events\.csv: rule 'event_type >= 1': field 'event_type' is not a number in 3 row\(s\) \(first: row 1, 'purchase'\)"):
        LabelRule.parse("event_type >= 1").matches(EVENTS, "events.csv")


def test_parsed_rule_is_plain_data() -> None:
    rule = LabelRule.parse("event_type in ['purchase', 'cart']")
    assert (rule.column, rule.op, rule.value) == ("event_type", "in", ("purchase", "cart"))
    assert rule == LabelRule.parse("event_type  in  ['purchase','cart']")  # the same rule, however it is spaced
    assert isinstance(rule.matches(EVENTS, "x"), np.ndarray)
