"""CEX: frozen-backbone content embeddings for item texts.

Only items whose (model, template, settings, text) key is missing from the cache go through
the model. Those are tokenized once, sorted by token length and cut into batches, so each
batch pads to a similar length (length bucketing) instead of the longest text overall.
Hidden states are pooled in float32 over real tokens only: mean pooling over the attention
mask (default), or the last real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learn_features.cex.cache import EmbeddingCache, cache_key
from learn_features.cex.model_loading import is_decoder, load_frozen, pick_device, pick_dtype, resolve_model
from learn_features.cex.prompt import DEFAULT_TEMPLATE
from learn_features.errors import LearnFeaturesError

POOLING_MODES = ("mean", "last")


@dataclass
class EncoderConfig:
    """Which frozen backbone embeds item text, and how."""

    model: str = "shipped:smollm2"
    gguf_file: str | None = None
    prompt_template: str = DEFAULT_TEMPLATE
    pooling: str = "mean"
    max_length: int = 128
    batch_size: int = 32
    chunk_size: int = 512  # items per cache shard: the unit of work lost on interruption
    device: str = "auto"
    dtype: str = "auto"
    add_special_tokens: bool | None = None  # None: off for decoders (stable across tokenizer versions), on for encoders
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise LearnFeaturesError(f"encoder.pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.max_length < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise LearnFeaturesError("encoder.max_length, encoder.batch_size and encoder.chunk_size must be positive")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, L, H) hidden states to (B, H) float32, ignoring padded positions."""
    hidden = hidden.float()
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    last = attention_mask.sum(dim=1).long() - 1  # right padding: last real token index
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ContentExtractor:
    """Embeds texts with a frozen backbone through the on-disk cache; loads the model lazily."""

    def __init__(self, config: EncoderConfig, cache_root: str | Path):
        self.config = config
        self.source = resolve_model(config.model, config.gguf_file)
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(self.device, config.dtype)
        self.cache = EmbeddingCache(cache_root, self.source.fingerprint)
        self._tokenizer = None
        self._model = None

    @property
    def settings(self) -> str:
        c = self.config
        return f"pool={c.pooling};max_len={c.max_length};special={c.add_special_tokens}"

    def keys(self, texts: list[str]) -> list[str]:
        return [cache_key(self.source.fingerprint, self.config.prompt_template, self.settings, t) for t in texts]

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

    @torch.inference_mode()
    def _forward(self, token_ids: list[list[int]]) -> np.ndarray:
        batch = self._tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt")
        pin = self.device.type == "cuda"
        input_ids = (batch["input_ids"].pin_memory() if pin else batch["input_ids"]).to(self.device, non_blocking=pin)
        mask = (batch["attention_mask"].pin_memory() if pin else batch["attention_mask"]).to(self.device, non_blocking=pin)
        hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.config.pooling).cpu().numpy()

    def embed_texts(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), hidden) float32, in input order; computes only cache misses."""
        keys = self.keys(texts)
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self.cache and key not in todo:
                todo[key] = text
        if todo:
            self._embed_missing(list(todo.keys()), list(todo.values()), progress)
        return self.cache.get_many(keys) if keys else np.zeros((0, 0), np.float32)

    def _embed_missing(self, keys: list[str], texts: list[str], progress: bool) -> None:
        self._ensure_model()
        c = self.config
        encoded = self._tokenizer(
            texts, truncation=True, max_length=c.max_length, add_special_tokens=self._add_special_tokens()
        )["input_ids"]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise LearnFeaturesError(f"{len(empty)} text(s) tokenize to nothing, e.g. {texts[empty[0]]!r}")
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        bar = tqdm(total=len(texts), desc=f"embedding with {self.config.model}", unit="item", disable=not progress)
        for start in range(0, len(order), c.chunk_size):
            chunk = order[start : start + c.chunk_size]
            vectors = [
                self._forward([encoded[i] for i in chunk[b : b + c.batch_size]])
                for b in range(0, len(chunk), c.batch_size)
            ]
            self.cache.put_many([keys[i] for i in chunk], np.concatenate(vectors))
            bar.update(len(chunk))
        bar.close()
