"""CEX: frozen-backbone content embeddings for item texts.

Only items whose (model, template, settings, text) key is missing from the cache go through
the model. Those are tokenized once, sorted by token length and cut into batches, so each
batch pads to a similar length (length bucketing) instead of the longest text overall.
Hidden states are pooled in float32 over real tokens only: mean pooling over the attention
mask (default), or the last real token.

The compute loop never waits on the disk: each finished chunk goes to a background writer
(``writer.py``) while the next batches run. ``fill_cache`` embeds one shard of the items
(``sharding.py``) for multi-GPU and multi-node extraction into a shared cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from learn_features.cex.cache import EmbeddingCache, cache_key
from learn_features.cex.model_loading import dtype_name, is_decoder, load_frozen, pick_dtype, resolve_model
from learn_features.cex.prompt import DEFAULT_TEMPLATE
from learn_features.cex.sharding import Shard
from learn_features.cex.writer import HostCopy, ShardWriter
from learn_features.config import MODEL_PATH
from learn_features.device import pick_device
from learn_features.errors import LearnFeaturesError

POOLING_MODES = ("mean", "last")
CONTENT_FIELDS = ("model", "gguf_file", "prompt_template", "pooling", "max_length", "add_special_tokens")
TOKENIZE_WAVE = 262_144  # cache misses tokenized and length-sorted together


@dataclass
class EncoderConfig:
    """Which frozen backbone embeds item text, and how."""

    model: str = field(default="shipped:smollm2", metadata=MODEL_PATH)  # shipped:<name> or a local folder
    gguf_file: str | None = None
    prompt_template: str = DEFAULT_TEMPLATE
    pooling: str = "mean"
    max_length: int = 128
    batch_size: int = 32
    chunk_size: int = 512  # items per cache shard: the unit of work lost on interruption
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 where the device computes it natively and fast, else fp32; or float32, bfloat16, float16 (cache key)
    add_special_tokens: bool | None = None  # None: off for decoders (stable across tokenizer versions), on for encoders
    trust_remote_code: bool = False
    shard: str | None = None  # "I/N": `learn-features extract` embeds only shard I of N into the cache (sharding.py)

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise LearnFeaturesError(f"encoder.pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.max_length < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise LearnFeaturesError("encoder.max_length, encoder.batch_size and encoder.chunk_size must be positive")
        if self.shard is not None:
            Shard.parse(self.shard)
        pick_dtype(torch.device("cpu"), self.dtype)  # an unknown dtype fails with the config, not at extraction

    def compute_dtype(self) -> torch.dtype:
        """The dtype the backbone runs in on this config's device (``auto`` resolved)."""
        return pick_dtype(pick_device(self.device), self.dtype)

    def content_identity(self) -> dict[str, Any]:
        """The settings that change the vectors (beside the weights): a content store records
        them, so training refuses content extracted under other settings. The dtype is the
        resolved one, so that ``auto`` resolved to bf16 (a GPU, a CPU with native bf16) and to
        fp32 never pass for each other."""
        return {**{name: getattr(self, name) for name in CONTENT_FIELDS}, "dtype": dtype_name(self.compute_dtype())}


def content_keys(config: EncoderConfig, fingerprint: str, texts: list[str]) -> list[str]:
    """Each text's cache key: weights, template, settings and text. The settings part holds the
    resolved dtype, so fp32 and bf16 vectors of the same text never share a key. A function of
    the config alone, so a content store can be checked without building an extractor."""
    c = config
    settings = f"pool={c.pooling};max_len={c.max_length};special={c.add_special_tokens};dtype={dtype_name(c.compute_dtype())}"
    return [cache_key(fingerprint, c.prompt_template, settings, t) for t in texts]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, L, H) hidden states to (B, H) float32, ignoring padded positions."""
    hidden = hidden.float()
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    last = attention_mask.sum(dim=1).long() - 1  # right padding: last real token index
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def plan_batches(lengths: list[int], batch_size: int, chunk_size: int) -> list[list[np.ndarray]]:
    """Length bucketing: item indices sorted by token length (stable), cut into chunks (one cache
    shard each) of batches, so each batch pads to nearly its own length, not the longest text's."""
    order = np.argsort(lengths, kind="stable")
    chunks = (order[start : start + chunk_size] for start in range(0, len(order), chunk_size))
    return [[chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)] for chunk in chunks]


@dataclass(frozen=True)
class Backbone:
    """An already-loaded (tokenizer, model) and the fingerprint its cache keys use.

    For benchmarks on random weights that exist only in memory; the pipeline loads from disk.
    """

    tokenizer: Any
    model: torch.nn.Module
    fingerprint: str


@dataclass
class ExtractionStats:
    """What went through the model since the extractor was made: real vs padded token slots."""

    items: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0  # batch size x longest text, summed over batches

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    def add_batch(self, lengths: list[int]) -> None:
        self.items += len(lengths)
        self.batches += 1
        self.real_tokens += sum(lengths)
        self.padded_tokens += len(lengths) * max(lengths)


@dataclass(frozen=True)
class ShardPass:
    """Outcome of ``fill_cache``: one worker's share of a sharded extraction."""

    shard: Shard
    items: int  # distinct items that fall in this shard
    embedded: int  # of those, how many were not cached yet

    def __str__(self) -> str:
        return (
            f"shard {self.shard}: {self.items} item(s) in this shard, {self.embedded} embedded now, "
            f"{self.items - self.embedded} already cached; run `learn-features extract` without a shard to assemble"
        )


class ContentExtractor:
    """Embeds texts with a frozen backbone through the on-disk cache; loads the model lazily."""

    def __init__(self, config: EncoderConfig, cache_root: str | Path, backbone: Backbone | None = None):
        self.config = config
        self.source = resolve_model(config.model, config.gguf_file) if backbone is None else None
        self.fingerprint = backbone.fingerprint if backbone is not None else self.source.fingerprint
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.device.index is not None:
            # One process per GPU (torchrun): its CUDA context, pinned buffers and events belong
            # on its own GPU, not on GPU 0 next to every other process's.
            torch.cuda.set_device(self.device)
        self.dtype = config.compute_dtype()
        self.cache = EmbeddingCache(cache_root, self.fingerprint)
        self.stats = ExtractionStats()
        self._tokenizer = backbone.tokenizer if backbone is not None else None
        self._model = backbone.model if backbone is not None else None

    def keys(self, texts: list[str]) -> list[str]:
        return content_keys(self.config, self.fingerprint, texts)

    def _ensure_model(self) -> None:
        if self._model is None:
            self._tokenizer, self._model = load_frozen(
                self.source, self.device, self.dtype, self.config.trust_remote_code
            )

    @property
    def hidden_size(self) -> int:
        self._ensure_model()
        return int(self._model.config.hidden_size)

    def _add_special_tokens(self) -> bool:
        if self.config.add_special_tokens is not None:
            return self.config.add_special_tokens
        return not is_decoder(self._model.config)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids exactly as the model gets them (truncated, special tokens per the config)."""
        self._ensure_model()
        encoded = self._tokenizer(
            texts, truncation=True, max_length=self.config.max_length, add_special_tokens=self._add_special_tokens()
        )["input_ids"]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise LearnFeaturesError(f"{len(empty)} text(s) tokenize to nothing, e.g. {texts[empty[0]]!r}")
        return encoded

    @torch.inference_mode()
    def _forward(self, token_ids: list[list[int]]) -> torch.Tensor:
        """Pooled (B, H) float32 vectors, left on the model's device so the loop does not sync per batch."""
        batch = self._tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt")
        pin = self.device.type == "cuda"
        input_ids = (batch["input_ids"].pin_memory() if pin else batch["input_ids"]).to(self.device, non_blocking=pin)
        mask = (batch["attention_mask"].pin_memory() if pin else batch["attention_mask"]).to(self.device, non_blocking=pin)
        hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.config.pooling)

    def embed_texts(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), hidden) float32, in input order; computes only cache misses."""
        return self.cache.get_many(self.ensure_cached(texts, progress))

    def ensure_cached(self, texts: list[str], progress: bool = True) -> list[str]:
        """Embed the cache misses among ``texts`` and return every text's cache key, in order.

        For catalogs too large for one matrix in memory: read the vectors back shard by shard
        with ``cache.scatter(keys)``.
        """
        keys = self.keys(texts)
        self._embed_missing(keys, texts, progress)
        return keys

    def fill_cache(self, texts: list[str], shard: Shard, progress: bool = True) -> ShardPass:
        """Embed the cache misses among the items of ``shard`` only; returns counts, no vectors."""
        owned = {key: text for key, text in zip(self.keys(texts), texts) if shard.owns(key)}
        embedded = self._embed_missing(list(owned), list(owned.values()), progress)
        return ShardPass(shard, len(owned), embedded)

    def _embed_missing(self, keys: list[str], texts: list[str], progress: bool) -> int:
        """Embed each distinct key not in the cache yet (loading the model only then); returns how many."""
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self.cache and key not in todo:
                todo[key] = text
        if todo:
            self._embed(list(todo.keys()), list(todo.values()), progress)
        return len(todo)

    @torch.inference_mode()
    def _embed(self, keys: list[str], texts: list[str], progress: bool) -> None:
        """Length-sorted batches, one cache shard per chunk, shards written in the background.

        Texts are tokenized and sorted a wave at a time: token ids of a 31M-item catalog would
        not fit in host memory, and sorting within a wave of 262k texts pads as little as
        sorting everything.
        """
        c = self.config
        bar = tqdm(total=len(texts), desc=f"embedding with {c.model}", unit="item", disable=not progress)
        with bar, ShardWriter(self.cache) as writer:
            for start in range(0, len(texts), TOKENIZE_WAVE):
                wave_keys = keys[start : start + TOKENIZE_WAVE]
                encoded = self.tokenize(texts[start : start + TOKENIZE_WAVE])
                for chunk in plan_batches([len(ids) for ids in encoded], c.batch_size, c.chunk_size):
                    pooled = []
                    for rows in chunk:
                        batch = [encoded[i] for i in rows]
                        pooled.append(self._forward(batch))
                        self.stats.add_batch([len(ids) for ids in batch])
                        # Per batch, not per chunk: on a CPU one chunk of a 135M decoder is minutes.
                        bar.update(len(rows))
                    writer.submit([wave_keys[i] for i in np.concatenate(chunk)], HostCopy.start(torch.cat(pooled)))
