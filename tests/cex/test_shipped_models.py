"""CEX on the real shipped backbones: SmolLM2-135M (GGUF, 576-d) and all-MiniLM-L6-v2 (384-d)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_fixtures import *  # noqa: F401,F403
from core_fixtures import MOVIELENS_DIR
from learn_features.cex.extractor import ContentExtractor, EncoderConfig
from learn_features.cex.model_loading import is_decoder
from learn_features.cex.prompt import render_prompts
from learn_features.data.movielens import load_movielens_catalog

pytestmark = pytest.mark.slow

ITEM_IDS = ["1", "2", "296", "318", "2571", "60756"]
LONG_TEXT = "Item description for a recommender system.\n" + "tags: " + ", ".join(f"tag number {i}" for i in range(30))


def sample_prompts() -> list[str]:
    """Six real MovieLens item prompts (default template); a fixed fallback without the data."""
    if (MOVIELENS_DIR / "movies.csv").exists():
        catalog = load_movielens_catalog(MOVIELENS_DIR).set_index("item_id").loc[ITEM_IDS].reset_index()
    else:  # pragma: no cover - the shared data is normally present
        catalog = pd.DataFrame(
            {
                "item_id": ITEM_IDS,
                "title": ["Toy Story", "Jumanji", "Pulp Fiction", "Shawshank Redemption, The", "Matrix, The", "Step Brothers"],
                "year": ["1995", "1995", "1994", "1994", "1999", "2008"],
                "genres": ["Animation, Comedy", "Adventure", "Crime, Drama", "Crime, Drama", "Action, Sci-Fi", "Comedy"],
            }
        )
    return render_prompts(catalog)


def sharing_model(loaded: ContentExtractor, cache: Path) -> ContentExtractor:
    """A second extractor (own cache) reusing the already-loaded backbone: no second 25 s load."""
    other = ContentExtractor(loaded.config, cache)
    other._tokenizer, other._model = loaded._tokenizer, loaded._model
    return other


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> ContentExtractor:
    extractor = ContentExtractor(EncoderConfig(device="cpu"), tmp_path_factory.mktemp("smol-cache"))
    assert extractor.config.model == "shipped:smollm2" and extractor.source.gguf_file
    extractor._ensure_model()
    return extractor


def test_smollm2_embeds_movielens_prompts(smollm2: ContentExtractor) -> None:
    """(6, 576) finite float32 vectors, distinct per item, and a decoder without special tokens."""
    prompts = sample_prompts()
    assert len(prompts) == 6
    vectors = smollm2.embed_texts(prompts, progress=False)
    assert vectors.shape == (6, 576) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert np.linalg.norm(vectors - vectors[0], axis=1)[1:].min() > 1e-3
    assert smollm2.hidden_size == 576
    # Decoders must not get special tokens (a BOS attention sink would dominate mean pooling).
    # SmolLM2's tokenizer adds none either way, so the shipped model's inputs are as intended:
    tokenizer = smollm2._tokenizer
    assert [tokenizer(p, add_special_tokens=smollm2._add_special_tokens())["input_ids"] for p in prompts] == [
        tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts
    ]


def test_gguf_decoder_is_recognised_as_decoder(smollm2: ContentExtractor) -> None:
    assert is_decoder(smollm2._model.config)
    assert smollm2._add_special_tokens() is False


def test_smollm2_mean_pooling_ignores_padding(smollm2: ContentExtractor, tmp_path: Path) -> None:
    """A prompt alone vs. padded next to a much longer prompt: the same vector (1e-4)."""
    prompt = sample_prompts()[0]
    alone = smollm2.embed_texts([prompt], progress=False)  # usually cached by the test above
    batched = sharing_model(smollm2, tmp_path / "b").embed_texts([LONG_TEXT, prompt], progress=False)
    tokens = smollm2._tokenizer([prompt, LONG_TEXT], add_special_tokens=False)["input_ids"]
    assert len(tokens[1]) > 3 * len(tokens[0])
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-4, rtol=0)


def test_minilm_embeds_384_and_respects_the_attention_mask(tmp_path: Path) -> None:
    """The bidirectional encoder: 384-d, special tokens on, and padding invariance (the mask matters here)."""
    prompts = sample_prompts()[:3]
    extractor = ContentExtractor(EncoderConfig(model="shipped:minilm", device="cpu"), tmp_path / "a")
    vectors = extractor.embed_texts(prompts, progress=False)
    assert vectors.shape == (3, 384) and np.isfinite(vectors).all()
    assert extractor._add_special_tokens() is True
    batched = sharing_model(extractor, tmp_path / "b").embed_texts([LONG_TEXT, prompts[0]], progress=False)
    np.testing.assert_allclose(batched[1], vectors[0], atol=1e-4, rtol=0)
