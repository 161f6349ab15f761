"""Models that exercise every path of the ops on a device, shared by tests/ops/test_cuda.py and
benchmarks/gpu_check.py (which a GPU machine runs without the test suite's other modules).

``randn(*shape)`` is the caller's source of float64 CPU noise (a seeded torch generator or NumPy
generator), so each caller keeps its own random stream."""

from __future__ import annotations

from typing import Any, Callable


def flat_model(randn: Callable, device: Any, dtype: Any, m: int, p: int) -> tuple:
    """x [P] and candidates c [M, P] near it, in ``dtype`` on ``device``."""
    x = randn(p)
    c = x + 0.1 * randn(m, p)
    return x.to(dtype).to(device), c.to(dtype).to(device)


def layered_model(torch: Any, randn: Callable, device: Any, dtype: Any, m: int) -> tuple:
    """A state_dict-like model: a layer spanning several 16384-element pieces, tiny layers, a
    transposed (strided) local view, a local view starting off 16-byte alignment (the scalar
    path), and an integer entry that takes no part. The M candidates are contiguous tensors of the
    same shapes (their strides may differ from the local model's)."""
    local = {
        "conv.weight": randn(3, 40001).to(dtype).to(device),
        "conv.bias": randn(7).to(dtype).to(device),
        "fc.weight": randn(33, 17).to(dtype).to(device).t(),
        "tail": randn(1029).to(dtype).to(device)[1:],
        "bn.num_batches_tracked": torch.tensor(5, device=device),
    }
    return local, [
        {
            k: (v.double().cpu() + 0.1 * randn(*v.shape)).to(dtype).to(device).contiguous()
            if v.is_floating_point()
            else v.clone()
            for k, v in local.items()
        }
        for _ in range(m)
    ]
