"""Shared test setup: make helper modules in tests/ importable, keep models offline, and run
every test as on the same CPU."""

import os
import pathlib
import sys
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

from learn_features.cex.model_loading import CPU_BF16_PROBES  # noqa: E402  after the offline switches: transformers reads them on import


@pytest.fixture(autouse=True, scope="session")
def cpu_without_native_bf16() -> Iterator[None]:
    """``dtype = "auto"`` follows the host (``learn_features.cex.model_loading.native_bf16``):
    bf16 on a CPU with avx512_bf16 or AMX where it is also faster, fp32 elsewhere. The tests
    pin cache keys, content identities and fp32 tolerances, so each sees a CPU without native
    bf16 whatever CI runs on. Session-wide, so that module fixtures that extract content see it too; the tests of
    ``native_bf16`` itself set torch's probes again."""
    with pytest.MonkeyPatch.context() as patch:
        for probe in CPU_BF16_PROBES:
            patch.setattr(torch.cpu, probe, lambda: False, raising=False)
        yield
