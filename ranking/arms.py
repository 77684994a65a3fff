"""The ranker arms of the experiment, one spec each: its ranker, the vectors it reads, and the
arm it is judged against.

Every consumer reads these specs: the config's model names and defaults, which vectors a
dataset must carry (``experiment.with_controls``), which ranker class trains an arm
(``experiment.train_models``), the comparisons and tier tables (``MODEL_PAIRS``) and the
report's order and labels. Adding an arm is one entry of ``ARMS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Ranker = Literal["lgbm", "dnn"]
#: The vectors an arm reads besides ids and statistics: the LEARN embeddings, or one of the
#: controls, which feed the same auxiliary network other vectors with the LEARN arm's
#: coverage, dimension and norm (``ranking/controls.py``).
Vectors = Literal["learn", "llm_frozen", "random"]
#: The report shows the DNN arms (the paper's Fig. 5) before the LightGBM ones.
REPORT_RANKERS: tuple[Ranker, ...] = ("dnn", "lgbm")


@dataclass(frozen=True)
class ArmSpec:
    """One arm. ``reference`` is the arm it differs from only by its vectors (None: a baseline);
    ``control_of`` names the LEARN arm whose information a control arm tests, which is then
    also judged against the control."""

    name: str
    label: str  # as the report names it
    ranker: Ranker
    vectors: Vectors | None = None
    reference: str | None = None
    control_of: str | None = None


#: In the config's order (``models`` defaults to its baselines and LEARN arms, in this order).
ARMS: tuple[ArmSpec, ...] = (
    ArmSpec("lgbm_baseline", "LightGBM (ID + statistics)", "lgbm"),
    ArmSpec("dnn_baseline", "DNN baseline (ID embeddings)", "dnn"),
    ArmSpec("lgbm_learn", "LightGBM + LEARN features", "lgbm", "learn", reference="lgbm_baseline"),
    ArmSpec("dnn_learn", "DNN + LEARN auxiliary network", "dnn", "learn", reference="dnn_baseline"),
    ArmSpec("dnn_llm_frozen", "DNN + frozen-LLM vectors (control)", "dnn", "llm_frozen", reference="dnn_baseline", control_of="dnn_learn"),
    ArmSpec("dnn_random", "DNN + random vectors (control)", "dnn", "random", reference="dnn_baseline", control_of="dnn_learn"),
)
ARMS_BY_NAME: dict[str, ArmSpec] = {arm.name: arm for arm in ARMS}
BASELINE_MODELS = tuple(arm.name for arm in ARMS if arm.vectors is None)
LEARN_MODELS = tuple(arm.name for arm in ARMS if arm.vectors == "learn")


def report_order(arms: tuple[ArmSpec, ...]) -> tuple[str, ...]:
    """The report's order of arms: DNN arms, then LightGBM arms, each in the given order."""
    return tuple(arm.name for ranker in REPORT_RANKERS for arm in arms if arm.ranker == ranker)


def model_pairs(arms: tuple[ArmSpec, ...]) -> tuple[tuple[str, str], ...]:
    """(reference, arm) pairs in the report's order: each LEARN arm against its baseline (the
    paper's question; these and the next also get Table 7), each control against its
    baseline, then each LEARN arm against each of its controls, which asks whether LEARN's
    information, not merely "some vector per user and item", makes the difference."""
    by_name = {arm.name: arm for arm in arms}
    ordered = [by_name[name] for name in report_order(arms)]
    learn = [(a.reference, a.name) for a in ordered if a.vectors == "learn" and a.reference]
    controls = [(a.reference, a.name) for a in ordered if a.control_of and a.reference]
    against_controls = [(a.name, a.control_of) for a in ordered if a.control_of]
    return tuple(learn + controls + against_controls)  # type: ignore[arg-type]


REPORT_ORDER = report_order(ARMS)
MODEL_PAIRS = model_pairs(ARMS)
