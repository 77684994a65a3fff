"""CEX: pooling, the on-disk embedding cache, prompts and model resolution, on a tiny random decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import files_in, save_tiny_llm
from learn_features.cex import extractor as extractor_module
from learn_features.cex import model_loading
from learn_features.cex.extractor import ContentExtractor, EncoderConfig, pool
from learn_features.cex.model_loading import SMOLLM2_GGUF, pick_dtype, resolve_model
from learn_features.cex.prompt import DEFAULT_TEMPLATE, render_prompts, template_fields
from learn_features.errors import LearnFeaturesError

SHORT = "A short film."
LONG = " ".join(f"word{i} and some more filler text" for i in range(40))
TEXTS = [
    "Toy Story: toys come to life.",
    SHORT,
    "Heat: a heist thriller in Los Angeles with a long chase.",
    "Jumanji",
    "A documentary about bees, honey and the people who keep them.",
    "Casino",
]


@pytest.fixture
def forward_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[list[int]]]:
    """Records the token-id batches that go through the model (one entry per forward)."""
    calls: list[list[list[int]]] = []
    original = ContentExtractor._forward

    def spy(self: ContentExtractor, token_ids: list[list[int]]) -> np.ndarray:
        calls.append([list(ids) for ids in token_ids])
        return original(self, token_ids)

    monkeypatch.setattr(ContentExtractor, "_forward", spy)
    return calls


def n_forwarded(calls: list[list[list[int]]]) -> int:
    return sum(len(batch) for batch in calls)


def make(model_dir: Path, cache: Path, **kwargs) -> ContentExtractor:
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("chunk_size", 64)
    return ContentExtractor(EncoderConfig(model=str(model_dir), device="cpu", **kwargs), cache)


# --- pooling ---------------------------------------------------------------------------


def test_pool_matches_manual_computation() -> None:
    """Mean over real tokens only; last = the last real token under right padding; float32 out."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    h = hidden.float()
    expected_mean = torch.stack([h[0, :2].mean(0), h[1].mean(0), h[2, 0]])
    expected_last = torch.stack([h[0, 1], h[1, 4], h[2, 0]])
    mean, last = pool(hidden, mask, "mean"), pool(hidden, mask, "last")
    assert mean.dtype == torch.float32 and last.dtype == torch.float32
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(last, expected_last)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_does_not_change_an_embedding(tiny_llm_dir: Path, tmp_path: Path, forward_calls, pooling: str) -> None:
    """A text embedded alone equals the same text embedded in a batch padded to a far longer text."""
    alone = make(tiny_llm_dir, tmp_path / "a", pooling=pooling).embed_texts([SHORT], progress=False)
    batched = make(tiny_llm_dir, tmp_path / "b", pooling=pooling).embed_texts([LONG, SHORT], progress=False)
    lengths = [len(ids) for ids in forward_calls[-1]]
    assert len(lengths) == 2 and max(lengths) > 5 * min(lengths), "the two texts must share one padded batch"
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5, rtol=0)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)


def test_output_follows_input_order_despite_length_bucketing(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """Rows come back in input order (the extractor sorts by length internally), duplicates included."""
    texts = TEXTS + [TEXTS[0]]
    together = make(tiny_llm_dir, tmp_path / "all", batch_size=3, chunk_size=4).embed_texts(texts, progress=False)
    assert together.shape == (len(texts), 32) and together.dtype == np.float32
    for i, text in enumerate(texts):
        alone = make(tiny_llm_dir, tmp_path / f"one{i}").embed_texts([text], progress=False)
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5, rtol=0)


# --- cache -----------------------------------------------------------------------------


def test_second_call_is_served_from_cache_without_loading_the_model(
    tiny_llm_dir: Path, tmp_path: Path, forward_calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same extractor: zero forwards. Fresh extractor on the same cache: the model is never loaded."""
    first = make(tiny_llm_dir, tmp_path)
    vectors = first.embed_texts(TEXTS, progress=False)
    assert n_forwarded(forward_calls) == len(TEXTS)
    forward_calls.clear()
    np.testing.assert_array_equal(first.embed_texts(TEXTS, progress=False), vectors)
    assert forward_calls == []

    def no_loading(*args, **kwargs):
        raise AssertionError("model loaded although every key is cached")

    monkeypatch.setattr(extractor_module, "load_frozen", no_loading)
    fresh = make(tiny_llm_dir, tmp_path)
    np.testing.assert_array_equal(fresh.embed_texts(list(reversed(TEXTS)), progress=False), vectors[::-1])
    assert fresh._model is None and forward_calls == []


def test_changing_one_text_reembeds_only_that_item(tiny_llm_dir: Path, tmp_path: Path, forward_calls) -> None:
    catalog = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TEXTS))], "title": TEXTS})
    before = make(tiny_llm_dir, tmp_path).embed_texts(render_prompts(catalog), progress=False)
    forward_calls.clear()
    catalog.loc[2, "title"] = "Heat: now a comedy."
    after = make(tiny_llm_dir, tmp_path).embed_texts(render_prompts(catalog), progress=False)
    assert n_forwarded(forward_calls) == 1
    unchanged = [i for i in range(len(TEXTS)) if i != 2]
    np.testing.assert_array_equal(after[unchanged], before[unchanged])
    assert not np.allclose(after[2], before[2])


def test_changing_the_prompt_template_reembeds_everything(tiny_llm_dir: Path, tmp_path: Path, forward_calls) -> None:
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "title": TEXTS[:3]})
    make(tiny_llm_dir, tmp_path).embed_texts(render_prompts(catalog), progress=False)
    forward_calls.clear()
    template = "Movie: {title}"
    make(tiny_llm_dir, tmp_path, prompt_template=template).embed_texts(render_prompts(catalog, template), progress=False)
    assert n_forwarded(forward_calls) == 3


def test_cache_keys_depend_on_every_setting(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """Pooling, max length, special tokens, template, model and text all enter the key."""
    base = make(tiny_llm_dir, tmp_path).keys([SHORT])[0]
    assert make(tiny_llm_dir, tmp_path).keys([SHORT])[0] == base  # stable
    variants = {
        "pooling": make(tiny_llm_dir, tmp_path, pooling="last"),
        "max_length": make(tiny_llm_dir, tmp_path, max_length=64),
        "special": make(tiny_llm_dir, tmp_path, add_special_tokens=True),
        "template": make(tiny_llm_dir, tmp_path, prompt_template="{title}"),
    }
    keys = {name: ex.keys([SHORT])[0] for name, ex in variants.items()}
    assert base not in keys.values() and len(set(keys.values())) == len(keys)
    assert make(tiny_llm_dir, tmp_path).keys([SHORT + " "])[0] != base
    # batch_size and chunk_size do not change the vectors, so they must not change the key.
    assert make(tiny_llm_dir, tmp_path, batch_size=1, chunk_size=1).keys([SHORT])[0] == base
    assert make(save_tiny_llm(tmp_path / "other", seed=1), tmp_path).keys([SHORT])[0] != base


def test_fp32_and_bf16_vectors_never_mix(tiny_llm_dir: Path, tmp_path: Path, forward_calls) -> None:
    """The compute dtype is in the cache key and the content identity: a bf16 extractor over a
    cache filled in fp32 embeds everything again, and ``auto`` on a CPU is fp32."""
    fp32 = make(tiny_llm_dir, tmp_path, dtype="float32")
    assert make(tiny_llm_dir, tmp_path).keys(TEXTS) == fp32.keys(TEXTS)  # auto on a CPU
    assert make(tiny_llm_dir, tmp_path).config.content_identity() == fp32.config.content_identity()
    full = fp32.embed_texts(TEXTS, progress=False)
    forward_calls.clear()
    bf16 = make(tiny_llm_dir, tmp_path, dtype="bfloat16")
    assert set(bf16.keys(TEXTS)).isdisjoint(fp32.keys(TEXTS))
    assert bf16.config.content_identity()["dtype"] == "bfloat16" != fp32.config.content_identity()["dtype"]
    half = bf16.embed_texts(TEXTS, progress=False)
    assert n_forwarded(forward_calls) == len(TEXTS) and half.dtype == np.float32
    assert not np.array_equal(half, full) and np.allclose(half, full, atol=0.1)
    assert np.array_equal(make(tiny_llm_dir, tmp_path, dtype="float32").embed_texts(TEXTS, progress=False), full)


def test_changing_pooling_reembeds_to_different_vectors(tiny_llm_dir: Path, tmp_path: Path, forward_calls) -> None:
    mean = make(tiny_llm_dir, tmp_path).embed_texts(TEXTS[:2], progress=False)
    forward_calls.clear()
    last = make(tiny_llm_dir, tmp_path, pooling="last").embed_texts(TEXTS[:2], progress=False)
    assert n_forwarded(forward_calls) == 2 and not np.allclose(mean, last)


def test_interrupted_extraction_keeps_finished_shards_and_resumes(
    tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the first chunk leaves that chunk's shard (and no temp file); a re-run embeds the rest."""
    reference = make(tiny_llm_dir, tmp_path / "ref").embed_texts(TEXTS, progress=False)
    cache = tmp_path / "cache"
    original = ContentExtractor._forward
    seen: list[int] = []

    def crash_on_second_chunk(self: ContentExtractor, token_ids: list[list[int]]) -> np.ndarray:
        if len(seen) == 1:
            raise KeyboardInterrupt
        seen.append(len(token_ids))
        return original(self, token_ids)

    monkeypatch.setattr(ContentExtractor, "_forward", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        make(tiny_llm_dir, cache, batch_size=2, chunk_size=2).embed_texts(TEXTS, progress=False)
    files = files_in(cache)
    assert len(files) == 1 and files[0].name.startswith("shard-") and files[0].suffix == ".npz"

    resumed: list[int] = []

    def counting(self: ContentExtractor, token_ids: list[list[int]]) -> np.ndarray:
        resumed.append(len(token_ids))
        return original(self, token_ids)

    monkeypatch.setattr(ContentExtractor, "_forward", counting)
    vectors = make(tiny_llm_dir, cache, batch_size=2, chunk_size=2).embed_texts(TEXTS, progress=False)
    assert sum(resumed) == len(TEXTS) - 2
    np.testing.assert_allclose(vectors, reference, atol=1e-5, rtol=0)
    assert not [p for p in files_in(cache) if p.suffix != ".npz" or not p.name.startswith("shard-")]


def test_crash_while_writing_a_shard_leaves_no_partial_file(
    tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside the shard write removes the half-written temp file; later runs are unaffected."""
    cache = tmp_path / "cache"
    make(tiny_llm_dir, cache).embed_texts(TEXTS[:2], progress=False)
    shards_before = files_in(cache)
    real_savez = np.savez

    def half_write(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(OSError, match="disk full"):
        make(tiny_llm_dir, cache).embed_texts(TEXTS, progress=False)
    assert files_in(cache) == shards_before
    assert not any(p.name.endswith(".tmp") for p in files_in(tmp_path))
    monkeypatch.setattr(np, "savez", real_savez)
    assert make(tiny_llm_dir, cache).embed_texts(TEXTS, progress=False).shape == (len(TEXTS), 32)


def test_new_weights_in_the_same_directory_invalidate_the_cache(tmp_path: Path) -> None:
    model_dir = save_tiny_llm(tmp_path / "model", seed=0)
    old = make(model_dir, tmp_path / "cache").embed_texts(TEXTS[:2], progress=False)
    save_tiny_llm(model_dir, seed=1)  # e.g. a re-trained checkpoint written to the same folder
    fresh = make(model_dir, tmp_path / "fresh-cache").embed_texts(TEXTS[:2], progress=False)
    assert not np.allclose(old, fresh)  # the new weights really embed differently
    served = make(model_dir, tmp_path / "cache").embed_texts(TEXTS[:2], progress=False)
    np.testing.assert_allclose(served, fresh, atol=1e-5)


def test_text_that_tokenizes_to_nothing_is_refused(tiny_llm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LearnFeaturesError, match="tokenize to nothing"):
        make(tiny_llm_dir, tmp_path).embed_texts(["fine", ""], progress=False)


def test_encoder_config_validation() -> None:
    with pytest.raises(LearnFeaturesError, match="encoder.pooling"):
        EncoderConfig(pooling="max")
    with pytest.raises(LearnFeaturesError, match="positive"):
        EncoderConfig(batch_size=0)
    with pytest.raises(LearnFeaturesError, match="not one of auto, float32, bfloat16"):
        EncoderConfig(dtype="int8")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)])
def test_auto_dtype_on_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16: bool, amx: bool, expected: torch.dtype) -> None:
    """Emulated bf16 ran SmolLM2 7x slower than fp32 on an AVX2 CPU: ``auto`` must not pick it there."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(model_loading, "cpu_bf16_speedup", lambda: 1.8)  # as on the AMD EPYC measured here
    assert pick_dtype(torch.device("cpu")) == expected
    assert EncoderConfig(device="cpu").content_identity()["dtype"] == str(expected).removeprefix("torch.")
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16  # an explicit choice is kept


@pytest.mark.parametrize("speedup, expected", [(0.5, torch.float32), (1.1, torch.float32), (1.2, torch.bfloat16), (2.9, torch.bfloat16)])
def test_auto_dtype_on_a_cpu_with_native_bf16_takes_it_only_where_it_is_clearly_faster(monkeypatch, speedup: float, expected: torch.dtype) -> None:
    """An Intel Xeon with avx512_bf16 and no AMX ran bf16 matrix products at half fp32's speed:
    the flags alone picked the slower dtype there."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(model_loading, "cpu_bf16_speedup", lambda: speedup)
    assert pick_dtype(torch.device("cpu")) == expected
    assert EncoderConfig(device="cpu").content_identity()["dtype"] == str(expected).removeprefix("torch.")


def test_the_cpu_bf16_speedup_is_measured_once_per_process() -> None:
    """The real measurement (tenths of a second), not a stub: a positive finite ratio, cached."""
    model_loading.cpu_bf16_speedup.cache_clear()
    first = model_loading.cpu_bf16_speedup()
    assert 0 < first < float("inf") and model_loading.cpu_bf16_speedup() == first
    assert model_loading.cpu_bf16_speedup.cache_info().hits == 1


def test_auto_dtype_without_the_cpu_probes_is_fp32(monkeypatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert pick_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_a_gpu_follows_its_native_bf16(monkeypatch, native: bool, expected: torch.dtype) -> None:
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or native)
    assert pick_dtype(torch.device("cuda")) == expected
    assert asked == [False]  # emulated bf16 (pre-Ampere) does not count


def test_decoder_gets_no_special_tokens_unless_asked(tiny_llm_dir: Path, tmp_path: Path, forward_calls) -> None:
    """For a ForCausalLM checkpoint, add_special_tokens defaults off; True adds [CLS]/[SEP]."""
    make(tiny_llm_dir, tmp_path / "a").embed_texts([SHORT], progress=False)
    make(tiny_llm_dir, tmp_path / "b", add_special_tokens=True).embed_texts([SHORT], progress=False)
    plain, special = forward_calls[0][0], forward_calls[1][0]
    assert special[1:-1] == plain and len(special) == len(plain) + 2


# --- prompts ---------------------------------------------------------------------------


CATALOG = pd.DataFrame(
    {
        "item_id": ["1", "2"],
        "title": ["Toy Story", " Heat "],
        "year": ["1995", None],
        "genres": ["Animation, Comedy", ""],
    }
)


def test_render_prompts_default_fields_template() -> None:
    """``{fields}`` lists every non-empty field as ``name: value`` lines, in column order."""
    prompts = render_prompts(CATALOG)
    assert prompts == [
        DEFAULT_TEMPLATE.format(fields="title: Toy Story\nyear: 1995\ngenres: Animation, Comedy"),
        DEFAULT_TEMPLATE.format(fields="title: Heat"),
    ]


def test_render_prompts_named_fields() -> None:
    """Named fields are substituted (stripped); empty or missing values render as empty strings."""
    prompts = render_prompts(CATALOG, "Movie: {title} ({year}). Genres: {genres}.")
    assert prompts == ["Movie: Toy Story (1995). Genres: Animation, Comedy.", "Movie: Heat (). Genres: ."]
    assert render_prompts(CATALOG, "{title}|{fields}")[1] == "Heat|title: Heat"


def test_render_prompts_unknown_field_is_named() -> None:
    with pytest.raises(LearnFeaturesError) as info:
        render_prompts(CATALOG, "{title} by {director}")
    message = str(info.value)
    assert "['director']" in message and "title" in message and "genres" in message
    with pytest.raises(LearnFeaturesError, match="not a valid format string"):
        template_fields("{title")


# --- model resolution ------------------------------------------------------------------


def test_resolve_model_errors(tmp_path: Path, tiny_llm_dir: Path) -> None:
    with pytest.raises(LearnFeaturesError, match="does not exist.*never fetched"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(LearnFeaturesError, match="unknown shipped model 'shipped:gpt5'"):
        resolve_model("shipped:gpt5")
    with pytest.raises(LearnFeaturesError, match=r"nope\.gguf: GGUF file not found"):
        resolve_model(str(tiny_llm_dir), gguf_file="nope.gguf")
    with pytest.raises(LearnFeaturesError, match=r"other\.gguf: GGUF file not found"):
        resolve_model("shipped:smollm2", gguf_file="other.gguf")


def test_resolve_shipped_models_without_loading() -> None:
    smol = resolve_model("shipped:smollm2")
    assert smol.gguf_file == SMOLLM2_GGUF and (smol.directory / SMOLLM2_GGUF).exists()
    minilm = resolve_model("shipped:minilm")
    assert minilm.gguf_file is None and (minilm.directory / "config.json").exists()
    assert smol.fingerprint.startswith("shipped:smollm2@") and minilm.fingerprint != smol.fingerprint
    assert resolve_model("shipped:minilm").fingerprint == minilm.fingerprint


def test_fingerprint_follows_config_and_weight_files(tmp_path: Path) -> None:
    model_dir = save_tiny_llm(tmp_path / "m")
    first = resolve_model(str(model_dir)).fingerprint
    assert resolve_model(str(model_dir)).fingerprint == first
    (model_dir / "extra.safetensors").write_bytes(b"0" * 10)
    second = resolve_model(str(model_dir)).fingerprint
    assert second != first
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text() + "\n")
    assert resolve_model(str(model_dir)).fingerprint not in (first, second)


def test_progress_moves_every_batch_not_every_cache_chunk(tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU one chunk of a real decoder takes minutes; the bar must move per batch."""
    updates: list[int] = []

    class RecordingBar:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> RecordingBar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            updates.append(n)

    monkeypatch.setattr(extractor_module, "tqdm", RecordingBar)
    texts = [f"item number {i} with some words" for i in range(10)]
    make(tiny_llm_dir, tmp_path, batch_size=3, chunk_size=8).embed_texts(texts)
    assert updates == [3, 3, 2, 2]  # chunks of 8 and 2 items, batches of at most 3
