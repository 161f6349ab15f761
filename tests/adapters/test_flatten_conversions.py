"""flatten_module's buffer keeps writing the model after the module is converted (.to(), .double(),
.half()), or the conversion fails loudly; copies of a flattened module are ordinary modules."""

from __future__ import annotations

import copy
import io

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fomo_core as fc  # noqa: E402
from fomo_core.adapters.torch import flatten_module  # noqa: E402


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def writes_the_model(model: nn.Module, flat: torch.Tensor) -> bool:
    """Whether writing ``flat`` changes every parameter of ``model`` (then puts it back)."""
    saved = flat.clone()
    with torch.no_grad():
        flat.fill_(0.25)
        every = all(bool((p == 0.25).all()) for p in model.parameters())
        flat.copy_(saved)
    return every


@pytest.mark.parametrize(
    "convert, dtype",
    [
        (lambda m: m.double(), torch.float64),
        (lambda m: m.to(torch.float64), torch.float64),
        (lambda m: m.half(), torch.float16),
        (lambda m: m.to(dtype=torch.bfloat16), torch.bfloat16),
    ],
)
def test_the_returned_buffer_follows_a_conversion(convert, dtype):
    model = mlp()
    flat = flatten_module(model)
    values = flat.clone()
    convert(model)
    assert flat.dtype == dtype and flat.shape == values.shape
    assert torch.equal(flat.float(), values.to(dtype).float())  # the model's values, converted
    assert writes_the_model(model, flat)
    assert flatten_module(model) is flat  # and it is still the module's buffer


def test_an_update_written_into_the_buffer_after_double_reaches_the_model():
    model = mlp()
    flat = flatten_module(model)
    model.double()
    target = torch.ones(1, flat.numel(), dtype=torch.float64)
    fc.apply_update(flat, target, [1.0], out=flat)
    out = model(torch.zeros(1, 5, dtype=torch.float64))
    assert torch.equal(out, torch.full((1, 3), 5.0, dtype=torch.float64))  # 4 hidden ReLU(1) + bias 1


def test_a_conversion_to_what_the_module_already_is_changes_nothing():
    model = mlp()
    flat = flatten_module(model)
    address = flat.data_ptr()
    model.to(torch.float32)
    model.float()
    assert flat.data_ptr() == address and writes_the_model(model, flat)


def test_buffers_flattened_with_the_parameters_follow_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    flat = flatten_module(model, include_buffers=True)
    model.double()
    mean = model[1].running_mean
    assert flat.dtype == torch.float64 and mean.dtype == torch.float64
    assert mean.data_ptr() == flat.data_ptr() + (15 + 6) * flat.element_size()  # after 12 + 3 + 3 + 3 params


def test_a_conversion_the_buffer_cannot_follow_raises_instead_of_leaving_it_stale():
    model = mlp()
    flat = flatten_module(model)
    view = flat[:3]  # a view keeps the old buffer referenced, so it cannot be swapped
    with pytest.raises(RuntimeError, match=r"Call flatten_module\(module\) again"):
        model.double()
    new = flatten_module(model)
    assert new.dtype == torch.float64 and writes_the_model(model, new)
    assert view.dtype == torch.float32


def test_a_deep_copy_is_an_ordinary_module_and_leaves_the_original_buffer_alone():
    model = mlp()
    flat = flatten_module(model)
    twin = copy.deepcopy(model)
    twin.double()
    assert twin[0].weight.dtype == torch.float64
    assert flat.dtype == torch.float32 and writes_the_model(model, flat)
    twin_flat = flatten_module(twin)
    assert twin_flat.data_ptr() != flat.data_ptr() and writes_the_model(twin, twin_flat)


def test_a_saved_and_loaded_module_converts_normally():
    model = mlp()
    flatten_module(model)
    stream = io.BytesIO()
    torch.save(model, stream)
    stream.seek(0)
    loaded = torch.load(stream, weights_only=False)
    loaded.double()
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
