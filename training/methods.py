"""The retrieval methods compared side by side in one run.

- ``learn_v1/v2/v3``: LLM content embeddings through the PCH towers, item-tower variants 1-3.
- ``id_baseline``: the same towers (variant 1) with learned item-ID embeddings instead of content.
- ``text_encoder``: the same towers (variant 1) over a small sentence encoder (MiniLM) instead of the LLM.
- ``llm_frozen``: the paper's Baseline-v1, no alignment: a user is the mean of their history's
  LLM content embeddings and an item its content embedding, compared by cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from learn_features.errors import LearnFeaturesError

Content = Literal["llm", "text_encoder", "ids"]


@dataclass(frozen=True)
class Method:
    name: str
    content: Content
    variant: int | None  # None: nothing is trained

    @property
    def trained(self) -> bool:
        return self.variant is not None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("learn_v1", "llm", 1),
        Method("learn_v2", "llm", 2),
        Method("learn_v3", "llm", 3),
        Method("id_baseline", "ids", 1),
        Method("text_encoder", "text_encoder", 1),
        Method("llm_frozen", "llm", None),
    )
}


def get_methods(names: list[str]) -> list[Method]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise LearnFeaturesError(f"eval.methods: unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return [METHODS[n] for n in names]
