"""Table 7 tiers and the paired user-level bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from learn_features.errors import LearnFeaturesError
from ranking.bootstrap import paired_bootstrap, user_multiplicities
from learn_features.data.config import DataConfig
from ranking.config import BootstrapConfig, ExperimentConfig, TierConfig
from ranking.experiment import tier_table
from ranking.tiers import resolve_thresholds, tier_of

T0 = pd.Timestamp("2021-01-01", tz="UTC")


def test_tier_boundaries():
    assert tier_of(np.array([0, 1, 5, 6, 100]), 5).tolist() == ["cold-start", "long-tail", "long-tail", "others", "others"]


def _history() -> pd.DataFrame:
    # users a..d with 1, 2, 4, 10 interactions before the cut; one event after it.
    users = ["a"] + ["b"] * 2 + ["c"] * 4 + ["d"] * 10 + ["e"]
    n = len(users)
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": [f"i{k % 3}" for k in range(n)],
            "timestamp": [T0 + pd.Timedelta(days=k) for k in range(n - 1)] + [T0 + pd.Timedelta(days=100)],
            "label": [1] * n,
        }
    )


def test_thresholds_from_quantile_ignore_post_cut_activity():
    th = resolve_thresholds(_history(), T0 + pd.Timedelta(days=50), TierConfig(long_tail_quantile=0.5))
    assert th.user_long_tail_max == 3  # median of [1, 2, 4, 10] = 3
    assert th.item_long_tail_max == 6  # items i0..i2 have 6, 6, 5 positives before the cut
    assert "q0.5" in th.how and "paper: 35" in th.how


def test_explicit_thresholds_win():
    th = resolve_thresholds(_history(), T0 + pd.Timedelta(days=50), TierConfig(user_long_tail_max=35, item_long_tail_max=30))
    assert (th.user_long_tail_max, th.item_long_tail_max) == (35, 30)


def test_no_history_before_cut_is_a_clear_error():
    with pytest.raises(LearnFeaturesError, match="no interactions before the cut"):
        resolve_thresholds(_history(), T0 - pd.Timedelta(days=1), TierConfig())


def test_multiplicities_are_user_draws():
    m = user_multiplicities(7, 50, np.random.default_rng(0))
    assert m.shape == (50, 7) and (m.sum(axis=1) == 7).all()


def _scores(seed: int = 0, n_users: int = 60, per_user: int = 20):
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{k}" for k in range(n_users)], per_user)
    labels = rng.integers(0, 2, len(users))
    noise = rng.random(len(users))
    return users, labels, noise


def test_identical_models_have_zero_delta_and_zero_width_interval():
    users, labels, s = _scores()
    out = paired_bootstrap(labels, s, s.copy(), users, 200, 0.95, seed=0)
    for d in out.values():
        assert d is not None and d.delta_pp == 0 and d.ci_low_pp == 0 and d.ci_high_pp == 0


def test_better_model_has_interval_above_zero_and_is_reproducible():
    users, labels, noise = _scores()
    better = noise + 0.8 * labels
    a = paired_bootstrap(labels, noise, better, users, 300, 0.95, seed=1)
    b = paired_bootstrap(labels, noise, better, users, 300, 0.95, seed=1)
    assert a == b
    for d in a.values():
        assert d is not None and d.delta_pp > 10 and d.ci_low_pp > 0 and d.ci_low_pp <= d.delta_pp <= d.ci_high_pp
    # Every user has 20 impressions, so WUAUC is UAUC; equal intervals show both read the same draws.
    assert a["wuauc"] is not None and a["uauc"] is not None
    assert a["wuauc"].to_dict() == pytest.approx(a["uauc"].to_dict())


def test_interval_widens_with_fewer_users():
    wide = paired_bootstrap(*_boot_inputs(8), 400, 0.95, seed=0)["uauc"]
    narrow = paired_bootstrap(*_boot_inputs(200), 400, 0.95, seed=0)["uauc"]
    assert wide is not None and narrow is not None
    assert (wide.ci_high_pp - wide.ci_low_pp) > 2 * (narrow.ci_high_pp - narrow.ci_low_pp)


def _boot_inputs(n_users: int):
    users, labels, noise = _scores(2, n_users=n_users)
    rng = np.random.default_rng(5)
    return labels, noise, noise + 0.2 * labels * rng.random(len(labels)), users


def test_undefined_metrics_are_none_not_nan():
    users = np.array(["a", "a", "b", "b"])
    out = paired_bootstrap(np.array([1, 1, 0, 0]), np.arange(4.0), np.arange(4.0)[::-1].copy(), users, 50, 0.95, seed=0)
    assert out["uauc"] is None  # every user single-class
    assert out["auc"] is not None  # but both classes exist overall
    out = paired_bootstrap(np.ones(4, int), np.arange(4.0), np.arange(4.0), users, 50, 0.95, seed=0)
    assert out == {"auc": None, "uauc": None, "wuauc": None}


def _tier_predictions() -> pd.DataFrame:
    """Users with 4..37 impressions (so WUAUC and UAUC differ), tied scores, one single-class user."""
    rng = np.random.default_rng(3)
    counts = rng.integers(4, 38, size=14)
    users = np.repeat([f"u{k:02d}" for k in range(len(counts))], counts)
    labels = rng.integers(0, 2, len(users))
    labels[users == "u00"] = 0  # no positives: excluded from the mean, not NaN
    base = np.round(rng.random(len(users)), 1)  # one decimal: many ties within a user
    return pd.DataFrame(
        {
            "user_id": users,
            "label": labels,
            "lgbm_baseline": base,
            "lgbm_learn": np.round(base + 0.4 * labels * rng.random(len(users)), 1),
            "user_tier": np.where(np.isin(users, ["u00", "u01", "u02", "u03", "u04"]), "long-tail", "others"),
            "item_tier": rng.choice(["cold-start", "long-tail", "others"], len(users)),
        }
    )


def _sklearn_wuauc(frame: pd.DataFrame, scores: str) -> float:
    """Reference: a loop of per-user ``roc_auc_score`` over two-class users, weighted by impressions."""
    two_class = [g for _, g in frame.groupby("user_id") if g["label"].nunique() == 2]
    return float(np.average([roc_auc_score(g["label"], g[scores]) for g in two_class], weights=[len(g) for g in two_class]))


def test_tier_wuauc_is_the_impression_weighted_mean_of_per_user_sklearn_auc():
    predictions = _tier_predictions()
    config = ExperimentConfig(data=DataConfig(positive="rating >= 4"), bootstrap=BootstrapConfig(n_resamples=300))
    rows = {(r.dimension, r.tier): r for r in tier_table(predictions, config)}
    assert len(rows) == 7 and rows["user", "cold-start"].wuauc is None  # empty tier
    for (dim, tier), row in rows.items():
        if row.n_impressions == 0:
            continue
        sub = predictions if dim == "all" else predictions[predictions[f"{dim}_tier"] == tier]
        base, learn = _sklearn_wuauc(sub, "lgbm_baseline"), _sklearn_wuauc(sub, "lgbm_learn")
        d = row.wuauc
        assert d is not None and row.uauc is not None
        assert (d.base, d.learn, d.delta_pp) == pytest.approx((base, learn, (learn - base) * 100.0), abs=1e-12)
        assert d.ci_low_pp <= d.delta_pp <= d.ci_high_pp and d.n_resamples == 300
    assert rows["all", "all"].wuauc.base != pytest.approx(rows["all", "all"].uauc.base)  # the weights matter here


def test_the_all_tier_reads_the_comparisons_bootstrap_and_equals_running_it():
    """``compare_arms`` already bootstraps each pair over all rows with the same draws the "all"
    tier uses: ``tier_table`` reads that result, and it is the one it would compute."""
    predictions = _tier_predictions()
    config = ExperimentConfig(data=DataConfig(positive="rating >= 4"), bootstrap=BootstrapConfig(n_resamples=100))
    pair = ("lgbm_baseline", "lgbm_learn")
    labels, users = predictions["label"].to_numpy(), predictions["user_id"].to_numpy()
    ran = paired_bootstrap(labels, predictions[pair[0]].to_numpy(), predictions[pair[1]].to_numpy(), users, 100, 0.95, config.bootstrap.seed)
    assert tier_table(predictions, config) == tier_table(predictions, config, {pair: ran})
    planted = {"auc": None, "uauc": None, "wuauc": None}
    rows = tier_table(predictions, config, {pair: planted})
    assert (rows[0].dimension, rows[0].auc) == ("all", None)  # read, not recomputed
    assert all(r.auc is not None for r in rows[1:] if r.n_impressions)
