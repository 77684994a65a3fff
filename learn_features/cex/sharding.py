"""Splitting one extraction over several processes (GPUs, nodes) that share the cache directory.

Shard ``I/N`` (0-based, ``0 <= I < N``) owns the items whose cache key, read as a number,
is ``I`` modulo ``N``. The key is a SHA-256 of (model fingerprint, template, settings, text),
so ownership depends on nothing but the item and the settings: it is the same on every run
and every machine, shards are disjoint and together cover every item, and an item keeps its
shard when the catalog grows. Each process writes its own cache shard files, so processes
never write the same file; a final unsharded extraction finds everything cached.

Under ``torchrun`` the shard comes from ``RANK``/``WORLD_SIZE`` when none is given, and
``LOCAL_RANK`` picks the process's own GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from learn_features.errors import LearnFeaturesError

KEY_DIGITS = 16  # 64 bits of the hex digest: uniform enough for any N


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise LearnFeaturesError(f"shard {self.index}/{self.count} is invalid: need 0 <= I < N (shards are 0-based)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> Shard(I, N); the error names the accepted form."""
        index, sep, count = text.strip().partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise LearnFeaturesError(f"shard {text!r} must look like I/N, e.g. 0/4 (shards are 0-based)")
        return cls(int(index), int(count))

    def owns(self, key: str) -> bool:
        return int(key[:KEY_DIGITS], 16) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise LearnFeaturesError(f"environment variable {name}={env[name]!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """torchrun's RANK/WORLD_SIZE as a shard; None outside a multi-process launch."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    world = _env_int(env, "WORLD_SIZE")
    return Shard(_env_int(env, "RANK"), world) if world > 1 else None


def resolve_shard(configured: str | None, env: Mapping[str, str] | None) -> Shard | None:
    """The configured shard (``llm.shard``, ``--shard``) wins; else the launcher's, when ``env`` is given."""
    if configured is not None:
        return Shard.parse(configured)
    return shard_from_env(env) if env is not None else None


def local_device(device: str, env: Mapping[str, str]) -> str:
    """Under torchrun, ``auto``/``cuda`` mean this process's GPU (LOCAL_RANK), not GPU 0 for every rank."""
    if device in ("auto", "cuda") and "LOCAL_RANK" in env and torch.cuda.is_available():
        return f"cuda:{_env_int(env, 'LOCAL_RANK')}"
    return device
