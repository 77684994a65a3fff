"""User and item activity tiers of the paper's Table 7.

Users are tiered by their interactions before the cut, items by their positives before the
cut: 0 -> cold-start, 1..T -> long-tail, > T -> others, whenever a row's features are taken
(``split.features_as_of``): the tiers are the paper's, activity before the ranking cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from learn_features.errors import LearnFeaturesError
from ranking.config import TierConfig

TIER_NAMES = ("cold-start", "long-tail", "others")


@dataclass(frozen=True)
class Thresholds:
    user_long_tail_max: int
    item_long_tail_max: int
    how: str  # human-readable derivation, printed in the report

    def to_dict(self) -> dict[str, object]:
        return {"T_u": self.user_long_tail_max, "T_i": self.item_long_tail_max, "how": self.how}


def resolve_thresholds(history: pd.DataFrame, cut: pd.Timestamp, cfg: TierConfig) -> Thresholds:
    """Explicit T_u/T_i from the config, else the configured quantile of pre-cut activity."""
    before = history[history["timestamp"] < cut]
    q = cfg.long_tail_quantile
    parts = []
    if cfg.user_long_tail_max is not None:
        t_u = cfg.user_long_tail_max
        parts.append(f"T_u={t_u} set in config")
    else:
        per_user = before.groupby("user_id", observed=True).size()
        if per_user.empty:
            raise LearnFeaturesError(f"tiers: no interactions before the cut {cut}; cannot derive T_u, set tiers.user_long_tail_max")
        t_u = max(1, math.ceil(float(per_user.quantile(q))))
        parts.append(f"T_u={t_u}: q{q:g} of pre-cut interactions over {len(per_user)} active users (paper: 35)")
    if cfg.item_long_tail_max is not None:
        t_i = cfg.item_long_tail_max
        parts.append(f"T_i={t_i} set in config")
    else:
        per_item = before[before["label"] == 1].groupby("item_id", observed=True).size()
        if per_item.empty:
            raise LearnFeaturesError(f"tiers: no positives before the cut {cut}; cannot derive T_i, set tiers.item_long_tail_max")
        t_i = max(1, math.ceil(float(per_item.quantile(q))))
        parts.append(f"T_i={t_i}: q{q:g} of pre-cut positives over {len(per_item)} items with a positive (paper: 30)")
    if t_u < 1 or t_i < 1:
        raise LearnFeaturesError(f"tiers: long-tail maxima must be >= 1, got T_u={t_u}, T_i={t_i}")
    return Thresholds(t_u, t_i, "; ".join(parts))


def tier_of(counts: np.ndarray | pd.Series, long_tail_max: int) -> np.ndarray:
    c = np.asarray(counts)
    return np.where(c == 0, TIER_NAMES[0], np.where(c <= long_tail_max, TIER_NAMES[1], TIER_NAMES[2]))


def assign_tiers(test: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """``user_tier`` and ``item_tier`` from ``user_n``/``item_pos`` counted before the cut
    (``point_in_time_stats`` as of the cut)."""
    return pd.DataFrame(
        {
            "user_tier": tier_of(test["user_n"], thresholds.user_long_tail_max),
            "item_tier": tier_of(test["item_pos"], thresholds.item_long_tail_max),
        },
        index=test.index,
    )
