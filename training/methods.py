"""The retrieval methods compared side by side in one run.

- ``learn_v1/v2/v3``: LLM content embeddings through the PCH towers, item-tower variants 1-3.
- ``text_encoder``: the same towers (variant 1) over a small sentence encoder (MiniLM) instead of the LLM.
- ``id_baseline``: the same towers (variant 1) with learned item-ID embeddings instead of content;
  every item with a training event owns an id, the rest share one "unknown" slot.
- ``llm_frozen``: the paper's Baseline-v1, no alignment: a user is the mean of their history's
  (centred) LLM content embeddings and an item its content embedding, compared by cosine.
- ``item_knn``, ``popularity_recent``, ``popularity``: what a user already has (see ``training.baselines``).

The order here is the order of every table: ``learn_v1`` (the reference of the paired
differences) first, the trivial rows last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from learn_features.errors import LearnFeaturesError

Content = Literal["llm", "text_encoder", "ids"]
Kind = Literal["towers", "content_mean", "item_knn", "popularity", "popularity_recent"]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    content: Content | None = None  # what the towers (or the content mean) read
    variant: int | None = None  # item-tower variant of trained towers

    @property
    def trained(self) -> bool:
        return self.kind == "towers"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("learn_v1", "towers", "llm", 1),
        Method("learn_v2", "towers", "llm", 2),
        Method("learn_v3", "towers", "llm", 3),
        Method("text_encoder", "towers", "text_encoder", 1),
        Method("id_baseline", "towers", "ids", 1),
        Method("llm_frozen", "content_mean", "llm"),
        Method("item_knn", "item_knn"),
        Method("popularity_recent", "popularity_recent"),
        Method("popularity", "popularity"),
    )
}


def get_methods(names: list[str]) -> list[Method]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise LearnFeaturesError(f"eval.methods: unknown method(s) {unknown}; choose from {list(METHODS)}")
    order = list(METHODS)
    return [METHODS[n] for n in sorted(dict.fromkeys(names), key=order.index)]
