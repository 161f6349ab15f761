"""CUDA: the device ops against an oracle on every CUDA device present, and the CUDA plumbing that
can be checked anywhere (build flags, device count, CUDA arrays in builds or machines without CUDA,
DLPack intake).

Oracles: the distances, scores, statuses and weights are compared with fomo_core.reference (the
pure-Python float64 twin of every op) when it is installed, otherwise with fomo_core's own CPU
kernels on host copies of the same data (and the test says which in its id). The updated
parameters are compared with x + sum_n w_n (c_n - x) evaluated in float64 by NumPy with the
weights the GPU produced, under the error bound of tests/tolerances.py (`update_bound`).

The device tests are parametrised over torch.cuda.device_count() devices and skip with the reason
when there is none (or when this build has no CUDA kernels).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_devices import DEVICES
from cuda_models import flat_model, layered_model
from tolerances import distance_rtol, score_rtol, update_bound, update_value_and_magnitude, weight_rtol

import fomo_core
from fomo_core import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---- oracles and bounds -----------------------------------------------------------------------


def _host(x):
    """Host copies (torch CPU tensors) of a model or vector."""
    if isinstance(x, dict):
        return {k: _host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_host(v) for v in x)
    return x.detach().cpu()


def _oracle_step(local, cands, l0, losses, norm, eps, all_scores):
    """(distances, scores, status codes, weights) as NumPy float64/bool from the reference."""
    res = reference.fomo_step(_host(local), _host(cands), l0, list(losses), norm=norm, eps=eps, all_scores=all_scores)
    return tuple(np.asarray(_np(v)) for v in (res.distances, res.scores, res.rejected, res.skipped, res.weights))


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _leaves(model) -> list:
    if isinstance(model, dict):
        return [v for v in model.values() if v.is_floating_point()]
    if isinstance(model, (list, tuple)):
        return [v for v in model if v.is_floating_point()]
    return [model]


def _candidate_models(cands) -> list:
    return list(cands) if isinstance(cands, (list, tuple)) else [cands[m] for m in range(cands.shape[0])]


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def distance_rtol_for(dtype, n: int) -> float:
    return distance_rtol(n, _name(dtype))


def _assert_update(params, local, cands, weights, dtype):
    """Every floating leaf of params equals local + sum w (c - local) within update_bound."""
    w = _np(weights)
    for leaf_out, leaf_x, *leaf_cs in zip(_leaves(params), _leaves(local), *map(_leaves, _candidate_models(cands))):
        out = _np(leaf_out).ravel()
        v, s = update_value_and_magnitude(_np(leaf_x).ravel(), [_np(c).ravel() for c in leaf_cs], w)
        bound = update_bound(_name(dtype), len(w), v, s)
        np.testing.assert_array_less(np.abs(out - v), bound)  # strict <: the bound is never 0 (tiny floor)


# ---- data -------------------------------------------------------------------------------------


def _randn(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)


def _flat(device, dtype, m: int, p: int, seed: int):
    return flat_model(_randn(seed), device, dtype, m, p)


def _layers(device, dtype, m: int, seed: int):
    return layered_model(torch, _randn(seed), device, dtype, m)


def _losses(m: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    losses = list(rng.uniform(0.2, 1.8, size=m))
    if m >= 2:
        losses[0], losses[1] = 0.5, 1.5  # at least one better and one worse than L0 = 1.0
    return losses


def _model(kind, device, dtype, m, seed):
    return _flat(device, dtype, m, 40000, seed) if kind == "flat" else _layers(device, dtype, m, seed)


def _size(local) -> int:
    return sum(leaf.numel() for leaf in _leaves(local))


def _assert_on(device, *tensors):
    for t in tensors:
        assert isinstance(t, torch.Tensor) and t.device == torch.device(device), (type(t), getattr(t, "device", None))


def _bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]).numpy()


# ---- device tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["flat", "layers"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ops_match_reference(device, dtype, kind, norm):
    m = 5
    seed = 1 + DTYPES.index(dtype) + 10 * (kind == "layers") + 100 * (norm == "l1")
    local, cands = _model(kind, device, dtype, m, seed)
    losses = _losses(m, seed=3)
    n = _size(local)

    d = fomo_core.candidate_distances(local, cands, norm=norm)
    s = fomo_core.first_order_scores(local, cands, 1.0, losses, norm=norm, eps=1e-5)
    w = fomo_core.compute_weights(local, cands, 1.0, losses, norm=norm)
    step = fomo_core.fomo_step(local, cands, 1.0, losses, norm=norm)
    upd = fomo_core.apply_update(local, cands, step.weights)
    _assert_on(
        device, d, s.scores, s.distances, s.rejected, w, step.weights, step.scores, step.distances, step.rejected
    )
    _assert_on(device, *_leaves(step.params), *_leaves(upd))

    ref_d, ref_s, ref_rej, ref_skip, ref_w = _oracle_step(local, cands, 1.0, losses, norm, 0.0, True)
    rtol = distance_rtol_for(dtype, n)
    np.testing.assert_allclose(_np(d), ref_d, rtol=rtol, atol=0)
    np.testing.assert_allclose(_np(step.distances), ref_d, rtol=rtol, atol=0)
    np.testing.assert_allclose(_np(step.scores), ref_s, rtol=score_rtol(n, _name(dtype)), atol=0)
    np.testing.assert_array_equal(_np(step.rejected), ref_rej)
    np.testing.assert_array_equal(_np(step.skipped), ref_skip)
    np.testing.assert_allclose(_np(step.weights), ref_w, rtol=weight_rtol(n, m, _name(dtype)), atol=0)  # zeros exact
    np.testing.assert_array_equal(_np(step.weights) == 0, ref_w == 0)
    np.testing.assert_array_equal(_np(w), _np(step.weights))  # same kernels, same order: bitwise

    _, e_s, *_ = _oracle_step(local, cands, 1.0, losses, norm, 1e-5, True)
    np.testing.assert_allclose(_np(s.scores), e_s, rtol=score_rtol(n, _name(dtype)), atol=0)

    _assert_update(step.params, local, cands, step.weights, dtype)
    for a, b in zip(_leaves(upd), _leaves(step.params)):  # the same pass either way
        np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_skipping_non_improving_candidates(device, dtype):
    local, cands = _flat(device, dtype, 6, 20000, seed=11)
    losses = [0.5, 1.0, 2.0, 0.9, 3.0, 0.99]
    res = fomo_core.fomo_step(local, cands, 1.0, losses, all_scores=False)
    ref_d, ref_s, ref_rej, ref_skip, ref_w = _oracle_step(local, cands, 1.0, losses, "l2", 0.0, False)
    np.testing.assert_array_equal(_np(res.skipped), [False, True, True, False, True, False])
    np.testing.assert_array_equal(_np(res.skipped), ref_skip)
    assert np.isnan(_np(res.distances)[[1, 2, 4]]).all() and np.isnan(_np(res.scores)[[1, 2, 4]]).all()
    np.testing.assert_allclose(_np(res.weights), ref_w, rtol=weight_rtol(20000, 6, _name(dtype)), atol=0)
    full = fomo_core.fomo_step(local, cands, 1.0, losses, all_scores=True)
    np.testing.assert_array_equal(_bits(full.weights), _bits(res.weights))  # weights do not depend on it
    np.testing.assert_array_equal(_bits(full.params), _bits(res.params))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_cases(device, dtype):
    local, cands = _flat(device, dtype, 4, 5000, seed=5)
    cands = cands.clone()
    cands[2, 17] = float("nan")  # a poisoned candidate: its distance is NaN, so it is rejected
    losses = [0.5, float("nan"), 0.4, float("inf")]
    res = fomo_core.fomo_step(local, cands, 1.0, losses)
    np.testing.assert_array_equal(_np(res.rejected), [False, True, True, True])
    np.testing.assert_array_equal(_np(res.weights), [1.0, 0.0, 0.0, 0.0])
    assert torch.isfinite(res.params.double()).all()
    _assert_update(res.params, local, cands, res.weights, dtype)

    # a diverged local loss rejects everyone: the model stays as it is, bit for bit
    res = fomo_core.fomo_step(local, cands, float("nan"), [0.5, 0.5, 0.5, 0.5])
    assert _np(res.rejected).all() and (_np(res.weights) == 0).all()
    np.testing.assert_array_equal(_bits(res.params), _bits(local))

    # nobody improves: weights 0 and a bitwise copy (NaN payloads and signed zeros included)
    special = local.clone()
    special[:3] = torch.tensor([float("nan"), -0.0, float("inf")], dtype=torch.float64).to(dtype)
    res = fomo_core.fomo_step(special, cands, 1.0, [2.0, 3.0, 1.0, 5.0])
    assert (_np(res.weights) == 0).all()
    np.testing.assert_array_equal(_bits(res.params), _bits(special))


@pytest.mark.parametrize("device", DEVICES)
def test_results_are_bitwise_reproducible(device):
    local, cands = _layers(device, torch.float32, 7, seed=9)
    losses = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.2]
    first = fomo_core.fomo_step(local, cands, 1.0, losses, norm="l1")
    for _ in range(3):
        again = fomo_core.fomo_step(local, cands, 1.0, losses, norm="l1")
        for a, b in [(first.weights, again.weights), (first.scores, again.scores), (first.distances, again.distances)]:
            np.testing.assert_array_equal(_bits(a), _bits(b))
        for a, b in zip(_leaves(first.params), _leaves(again.params)):
            np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_in_place_update_and_out(device, dtype):
    local, cands = _flat(device, dtype, 3, 30000, seed=21)
    expected = fomo_core.fomo_step(local, cands, 1.0, [0.5, 0.8, 1.5]).params
    work = local.clone()
    res = fomo_core.fomo_step(work, cands, 1.0, [0.5, 0.8, 1.5], out=work)
    assert res.params is work
    np.testing.assert_array_equal(_bits(work), _bits(expected))
    out = torch.empty_like(local)
    fomo_core.apply_update(local, cands, [0.25, 0.75, 0.0], out=out)
    _assert_update(out, local, cands, np.array([0.25, 0.75, 0.0]), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    local = torch.randn(100, device=device)
    none = torch.empty(0, 100, device=device)
    res = fomo_core.fomo_step(local, none, 1.0, [])
    assert res.weights.shape == (0,) and res.weights.device == torch.device(device)
    np.testing.assert_array_equal(_bits(res.params), _bits(local))
    empty = torch.empty(0, device=device)
    d = fomo_core.candidate_distances(empty, torch.empty(3, 0, device=device))
    np.testing.assert_array_equal(_np(d), np.zeros(3))  # the distance over no entries is 0


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_current_stream(device):
    local, cands = _flat(device, torch.float32, 4, 1 << 20, seed=2)
    losses = [0.5, 0.6, 1.2, 0.7]
    expected = fomo_core.fomo_step(local, cands, 1.0, losses)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        # produced on `stream` just before the call: only correct if the kernels run after it there
        fresh_local = local * 1.0
        res = fomo_core.fomo_step(fresh_local, cands, 1.0, losses)
    stream.synchronize()
    np.testing.assert_array_equal(_bits(res.weights), _bits(expected.weights))
    np.testing.assert_array_equal(_bits(res.params), _bits(expected.params))


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_devices_are_rejected_by_name(device):
    local, cands = _flat(device, torch.float32, 2, 100, seed=1)
    with pytest.raises(ValueError, match=r"candidate_params\[0\].*cpu"):
        fomo_core.fomo_step(local, [cands[0].cpu(), cands[1]], 1.0, [0.5, 0.5])
    if torch.cuda.device_count() < 2:
        return
    other = torch.device("cuda", (torch.device(device).index + 1) % torch.cuda.device_count())
    with pytest.raises(ValueError, match=r"candidate_params\[1\] is on cuda"):
        fomo_core.fomo_step(local, [cands[0], cands[1].to(other)], 1.0, [0.5, 0.5])


@pytest.mark.parametrize("device", DEVICES)
def test_cupy_arrays_stay_on_device(device):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    index = torch.device(device).index
    with cupy.cuda.Device(index):
        x = cupy.random.standard_normal(50000).astype(cupy.float32)
        c = x + 0.1 * cupy.random.standard_normal((3, 50000)).astype(cupy.float32)
        out = cupy.empty_like(x)
        res = fomo_core.fomo_step(x, c, 1.0, [0.5, 0.7, 1.4], out=out)
    assert isinstance(res.weights, cupy.ndarray) and res.weights.device.id == index
    ref = fomo_core.fomo_step(torch.as_tensor(x.get()), torch.as_tensor(c.get()), 1.0, [0.5, 0.7, 1.4])
    # same element terms on both sides; only the float64 summation order differs: the float64 part
    # of the weight bound (the float32 difference rounding is the same on both sides)
    rtol = weight_rtol(50000, 3, "float64")
    np.testing.assert_allclose(res.weights.get(), ref.weights.numpy(), rtol=rtol, atol=0)


# ---- tests that run on every machine ----------------------------------------------------------


def _nvcc_present() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


def _gpu_visible() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    return result.returncode == 0 and bool(result.stdout.strip())


def test_build_has_cuda_kernels_whenever_nvcc_is_present_and_cuda_is_asked_for():
    """The build's rule (CMakeLists.txt): with nvcc, CUDA is built for FOMO_CUDA=ON, for named
    architectures, or in AUTO when a GPU is visible. CI names one architecture."""
    if not _nvcc_present():
        pytest.skip("no nvcc on this machine: the CPU-only build is expected")
    mode = os.environ.get("FOMO_CUDA", "AUTO").upper()
    if mode == "OFF":
        pytest.skip("FOMO_CUDA=OFF in the environment: the CUDA kernels were switched off on purpose")
    if mode != "ON" and not os.environ.get("FOMO_CUDA_ARCHITECTURES") and not _gpu_visible():
        pytest.skip("no GPU visible and CUDA not asked for (FOMO_CUDA, FOMO_CUDA_ARCHITECTURES): CPU-only build")
    info = fomo_core.build_info()
    assert info["cuda"] is True, "nvcc is on this machine but fomo_core was built without its CUDA kernels"
    assert isinstance(info["cuda_version"], str) and info["cuda_version"][:2].isdigit()


def test_has_cuda_is_truthful():
    info = fomo_core.build_info()
    assert fomo_core.has_cuda() is (info["cuda"] and info["cuda_devices"] > 0)
    if torch.cuda.is_available() and info["cuda"]:
        assert info["cuda_devices"] == torch.cuda.device_count()
    if not torch.cuda.is_available() and not list(Path("/dev").glob("nvidia[0-9]*")):
        # no GPU on this machine: the static runtime must say 0 (not raise) and has_cuda is False
        assert info["cuda_devices"] == 0
        assert fomo_core.has_cuda() is False


def test_cuda_tensor_in_a_build_without_cuda_names_the_argument():
    if not torch.cuda.is_available():
        pytest.skip("needs a torch CUDA tensor: this torch has no CUDA device")
    if fomo_core.build_info()["cuda"]:
        pytest.skip("this build has CUDA kernels; the error is for builds without them")
    x = torch.zeros(10, device="cuda")
    with pytest.raises(TypeError, match=r"local_params is a CUDA array .*no CUDA kernels"):
        fomo_core.compute_weights(x, x[None], 1.0, [0.5])


class ForeignCudaArray:
    """A producer of __cuda_array_interface__ describing device memory fomo_core must never touch
    here: only the intake's checks run (a build without CUDA refuses the array by name; a build
    with CUDA asks the driver which device owns the pointer, which fails without a device, or finds
    it is no device memory)."""

    def __init__(self, shape):
        self.shape = shape
        self.dtype = np.dtype(np.float32)

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": "<f4",
            "data": (0x7F0000000000, False),
            "version": 3,
            "strides": None,
            "stream": None,
        }


def test_unusable_cuda_array_gives_a_clear_error_naming_the_argument():
    if fomo_core.has_cuda():
        pytest.skip("a device is present: the driver would be asked about a pointer this test made up")
    x, c = ForeignCudaArray((10,)), ForeignCudaArray((2, 10))
    if fomo_core.build_info()["cuda"]:
        # the CUDA runtime's own error (no driver or no device) reaches the caller, named
        with pytest.raises(RuntimeError, match=r"local_params: .*CUDA error in cudaPointerGetAttributes: cuda\w+: "):
            fomo_core.candidate_distances(x, c)
    else:
        with pytest.raises(TypeError, match=r"local_params is a CUDA array \(ForeignCudaArray\)"):
            fomo_core.candidate_distances(x, c)


class DLPackOnly:
    """An array offering only DLPack (as JAX arrays do), delegating to a real producer."""

    def __init__(self, array):
        self._array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def __dlpack__(self, stream=None):
        return self._array.__dlpack__()

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dlpack_intake_matches_direct_arrays(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 600, generator=g).to(dtype)[:, ::3]  # strided view (DLPack strides)
    c = (torch.randn(3, 2, 600, generator=g).to(dtype))[:, :, 1::3]  # offset start (byte_offset/data)
    y = torch.randn(77, generator=g).to(dtype)[5:]
    local = [x, y]
    cands = [[c[m], y + 0.01 * m] for m in range(3)]
    wrapped_local = [DLPackOnly(a) for a in local]
    wrapped_cands = [[DLPackOnly(a) for a in model] for model in cands]
    direct = fomo_core.fomo_step(local, cands, 1.0, [0.5, 0.7, 1.3], out=[torch.empty_like(x), torch.empty_like(y)])
    out = [torch.empty_like(x), torch.empty_like(y)]
    via = fomo_core.fomo_step(wrapped_local, wrapped_cands, 1.0, [0.5, 0.7, 1.3], out=[DLPackOnly(o) for o in out])
    np.testing.assert_array_equal(_np(via.weights), _np(direct.weights))
    np.testing.assert_array_equal(_np(via.distances), _np(direct.distances))
    for a, b in zip(out, direct.params):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_dlpack_intake_refuses_other_devices_by_name():
    class OnAnotherDevice(DLPackOnly):
        def __dlpack_device__(self):
            return (4, 0)  # kDLOpenCL

    x = torch.zeros(4)
    with pytest.raises(TypeError, match=r"local_params is a DLPack array on device type 4"):
        fomo_core.candidate_distances(OnAnotherDevice(x), x[None])
