"""The CUDA devices the device tests run on (tests/ops/test_cuda.py, test_evaluate_candidates_cuda.py):
every device torch and this fomo_core build both see, or one skipped parameter saying why none."""

from __future__ import annotations

import pytest
import torch

import fomo_core


def _cuda_devices() -> list:
    if not torch.cuda.is_available():
        reason = "no CUDA device: torch sees none (a CPU-only torch, or no GPU on this machine)"
    elif not fomo_core.build_info()["cuda"]:
        reason = "this fomo_core build has no CUDA kernels (built without nvcc or with FOMO_CUDA=OFF)"
    elif not fomo_core.has_cuda():
        reason = "fomo_core's CUDA runtime sees no device (driver too old for its CUDA version?)"
    else:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-cuda-device")]


DEVICES = _cuda_devices()
