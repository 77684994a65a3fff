"""Arms over several seeds, and when a difference between two arms counts as a lift.

A single training run of a small ranker moves UAUC by a few points from one seed to the
next (issue 11: +3.40, -1.50 and +0.51 pp for the same DNN + LEARN comparison). The user
bootstrap resamples users, not training runs, so it cannot see that spread. Each arm is
therefore trained once per seed, and two arms are compared in two ways that answer two
different questions:

* **seed-paired**: per seed s, arm(s) - reference(s), with the mean and SD over seeds. Does
  the difference survive retraining? It counts when ``|mean| > 2 SD``.
* **bootstrap**: the paired user bootstrap on the seed-averaged predictions (the mean of the
  seeds' probabilities per row). Would the difference survive other users?

A lift is claimed only when both hold in its favour; with one seed there is no spread, so
no claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranking.bootstrap import PairedDelta

#: A seed-paired difference counts when its mean is beyond this many SDs from zero.
SPREAD_MULTIPLE = 2.0


def _finite(values: list[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


@dataclass(frozen=True)
class SeedSpread:
    """Mean and sample SD (ddof=1) of one metric over seeds; SD None with fewer than two."""

    values: list[float | None]

    @property
    def mean(self) -> float | None:
        ok = _finite(self.values)
        return float(np.mean(ok)) if ok else None

    @property
    def sd(self) -> float | None:
        ok = _finite(self.values)
        return float(np.std(ok, ddof=1)) if len(ok) >= 2 else None

    def to_dict(self) -> dict[str, object]:
        return {"values": self.values, "mean": self.mean, "sd": self.sd}


@dataclass(frozen=True)
class SeedPaired:
    """Per-seed differences arm - reference, in percentage points."""

    deltas_pp: list[float | None]

    @property
    def spread(self) -> SeedSpread:
        return SeedSpread(self.deltas_pp)

    @property
    def beyond_noise(self) -> bool | None:
        """``|mean| > 2 SD``; None without a spread to compare with: one seed, or an SD of 0
        (every seed trained the same models, as LightGBM does without subsampling)."""
        mean, sd = self.spread.mean, self.spread.sd
        return None if mean is None or not sd else abs(mean) > SPREAD_MULTIPLE * sd

    @classmethod
    def of(cls, reference: list[float | None], arm: list[float | None]) -> SeedPaired:
        return cls([None if a is None or r is None else (a - r) * 100.0 for r, a in zip(reference, arm)])

    def to_dict(self) -> dict[str, object]:
        return {"deltas_pp": self.deltas_pp, "mean_pp": self.spread.mean, "sd_pp": self.spread.sd, "beyond_2sd": self.beyond_noise}


def verdict(paired: SeedPaired, boot: PairedDelta | None) -> tuple[str, str]:
    """("lift" | "worse" | "not shown", why): both tests must agree for a lift or a loss."""
    mean, sd = paired.spread.mean, paired.spread.sd
    if mean is None or sd is None:
        return "not shown", "one seed: no seed spread to judge against"
    if sd == 0:
        return "not shown", "every seed gave the same difference (deterministic training): no seed spread to judge against"
    if boot is None:
        return "not shown", "the metric is undefined on the evaluation rows"
    seed_ok = abs(mean) > SPREAD_MULTIPLE * sd
    interval = f"[{boot.ci_low_pp:+.2f}, {boot.ci_high_pp:+.2f}]"
    seed_text = f"seed-paired {mean:+.2f} ± {sd:.2f} pp ({'beyond' if seed_ok else 'within'} 2 SD)"
    if seed_ok and mean > 0 and boot.ci_low_pp > 0:
        return "lift", f"{seed_text}; bootstrap {interval} excludes 0"
    if seed_ok and mean < 0 and boot.ci_high_pp < 0:
        return "worse", f"{seed_text}; bootstrap {interval} excludes 0"
    boot_text = f"bootstrap {interval} {'includes' if boot.ci_low_pp <= 0 <= boot.ci_high_pp else 'excludes'} 0"
    return "not shown", f"{seed_text}; {boot_text}"
