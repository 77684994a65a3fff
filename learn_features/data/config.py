"""One data vocabulary for every job: where the interactions and the catalog come from, and
which interactions count as positives (and, for the rankers, as negatives).

The pipeline (``training/config.py``) and the ranking report (``ranking/config.py``) both hold
a ``data`` section of this type, so a data set is described once, in the same words, and read
by the same reader (``learn_features.data.sources``). Keys of the ranking's former vocabulary
are refused by name with their new spelling (``RETIRED_KEYS``), not as mere unknown keys, so
an old config says what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from learn_features.config import PATH
from learn_features.data.labels import LabelRule
from learn_features.data.tables import ORDER_BY_TIME
from learn_features.errors import LearnFeaturesError


@dataclass
class DataConfig:
    """A data set and its labelling rules.

    ``source`` names a reader of ``learn_features.data.sources.DATA_SOURCES``: ``movielens``
    (an ml-latest-* folder, ``movielens_dir``) or ``files`` (the ``interactions`` table and the
    ``catalog``, CSV or Parquet; README, "Input format"). Each reader says which keys apply to
    it and refuses the others when the config loads.

    ``positive`` says which events count as positives, e.g. ``"rating >= 4"``, ``"label == 1"``
    or ``"event_type in ['purchase', 'cart']"`` (``learn_features.data.labels``): LEARN's
    training targets and the targets evaluation looks for (None: every event), and the
    rankers' conversion label. ``negative`` is the rankers' non-conversion label (None: every
    event that is not positive); an event that matches neither is activity, not an impression.
    ``order`` sequences each user's events: ``timestamp``, the file's ``row`` order, or a
    numeric position column (sequence-only data, leave-one-out only). ``genres_column`` names
    a catalog column of genre-like tags, split on ``genres_separator``, that the rankers read
    as multi-hot item features.
    """

    source: str = "movielens"
    movielens_dir: str = field(default="data/ml-latest-small", metadata=PATH)
    interactions: str | None = field(default=None, metadata=PATH)
    catalog: str | None = field(default=None, metadata=PATH)
    positive: str | None = None
    negative: str | None = None
    order: str = ORDER_BY_TIME
    genres_column: str | None = None
    genres_separator: Literal["|", ","] = "|"

    #: Keys of the ranking report's former data vocabulary, and what to write instead
    #: (read by ``learn_features.config.from_dict``).
    RETIRED_KEYS: ClassVar[dict[str, str]] = {
        "format": 'was renamed data.source (format "generic" is source "files" with positive = "label == 1")',
        "items": "was renamed data.catalog",
        "positive_min_rating": 'was replaced by the rule data.positive, e.g. positive = "rating >= 4"',
        "negative_max_rating": 'was replaced by the rule data.negative, e.g. negative = "rating <= 3"',
    }

    def __post_init__(self) -> None:
        from learn_features.data.sources import data_source  # the readers read this config

        data_source(self.source).check(self)
        self.label_rules()  # a bad rule is refused when the config loads, before any work

    def label_rules(self) -> tuple[LabelRule | None, LabelRule | None]:
        """The parsed (positive, negative) rules; None where the rule is not set."""
        positive = None if self.positive is None else LabelRule.parse(self.positive, "data.positive")
        negative = None if self.negative is None else LabelRule.parse(self.negative, "data.negative")
        return positive, negative

    def conversion_rules(self) -> tuple[LabelRule, LabelRule | None]:
        """The rankers' (conversion, non-conversion) rules: a ranker cannot train without the first."""
        positive, negative = self.label_rules()
        if positive is None:
            raise LearnFeaturesError("data.positive is needed: the rankers' conversion label, a rule such as \"rating >= 4\" or \"label == 1\"")
        return positive, negative
