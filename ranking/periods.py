"""The ranking's time periods (train < validation < cut <= evaluation) and each row's feature time.

Leakage rule, applied to every row: each feature of an impression at time ``t`` is taken as of
one time ``as_of`` (``split.features_as_of``): ``min(t, cut)`` in ``"cut"`` mode, ``t`` itself in
``"impression"`` mode (``feature_times``). The joins (``ranking/joins.py``) use nothing at or
after ``as_of``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from learn_features.data.split import parse_time
from learn_features.errors import LearnFeaturesError
from ranking.config import PeriodsConfig


@dataclass(frozen=True)
class Periods:
    """Half-open periods: train [train_start, valid_start), valid [valid_start, cut), eval [cut, eval_end]."""

    train_start: pd.Timestamp
    valid_start: pd.Timestamp
    cut: pd.Timestamp
    eval_end: pd.Timestamp

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in self.__dict__.items()}


def resolve_periods(impressions: pd.DataFrame, cfg: PeriodsConfig) -> Periods:
    ts = impressions["timestamp"]
    if ts.empty:
        raise LearnFeaturesError("impressions: no rows")
    cut = parse_time(cfg.cut, "split.cut") if cfg.cut else ts.quantile(cfg.cut_quantile)
    train_start = parse_time(cfg.train_start, "split.train_start") if cfg.train_start else ts.min()
    eval_end = parse_time(cfg.eval_end, "split.eval_end") if cfg.eval_end else ts.max()
    before = ts[(ts >= train_start) & (ts < cut)]
    if before.empty:
        raise LearnFeaturesError(f"split: no impressions in [{train_start}, {cut}); move the cut or train_start")
    valid_start = before.quantile(1.0 - cfg.valid_fraction)
    periods = Periods(train_start, valid_start, cut, eval_end)
    counts = {
        "train": int(((ts >= train_start) & (ts < valid_start)).sum()),
        "validation": int(((ts >= valid_start) & (ts < cut)).sum()),
        "evaluation": int(((ts >= cut) & (ts <= eval_end)).sum()),
    }
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise LearnFeaturesError(f"split: period(s) {empty} have no impressions ({periods.to_dict()})")
    return periods


def feature_times(timestamps: pd.Series, cut: pd.Timestamp, mode: str) -> pd.Series:
    """Each row's ``as_of``: the impression time, clamped to the cut in ``"cut"`` mode."""
    return timestamps.where(timestamps < cut, cut) if mode == "cut" else timestamps.copy()
