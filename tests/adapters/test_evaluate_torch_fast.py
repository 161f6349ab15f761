"""The faster torch evaluation routes and early stopping (fomo_core.adapters.torch_evaluate).

- The loop route (inference mode, max_pool2d by strided maxima) gives the plain per-candidate
  loop's losses bit for bit: the same forward, a maximum is exact. A convolutional model's 4-D
  input goes in channels_last (the plain loop below feeds it so); against the NCHW loop that is
  float32 rounding, bounded as the benchmarks' agreement checks bound it (loss_rtol below). So are
  the default forwards of a convolutional model over a bounded number of rows against one forward.
- The vmap route and "auto" agree to float32 rounding: rtol 1e-6, because batched convolutions and
  matmuls sum in other orders than the per-candidate kernels (measured below 1e-7 relative).
- bfloat16 autocast is opt-in and agrees within 2e-2 relative: bfloat16 keeps 8 significant bits
  (relative rounding 2^-9 per operation), compounded over a few layers on these small models.
- Early stopping stops only candidates confidently above the baseline loss, never one below it
  on these cases, and leaves every loss exact when nothing is stopped.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector

import fomo_core as fc
from fomo_core.adapters._torch_fast import window_max
from fomo_core.adapters.torch_evaluate import EarlyStop, EarlyStopped, evaluate_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lenet(seed: int, pool: nn.Module) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        pool,
        nn.Conv2d(4, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.LazyLinear(5),
    )


def _models(pool: nn.Module, count: int = 3, size: int = 17):
    models = []
    for s in range(count):
        net = _lenet(s, copy.deepcopy(pool))
        net(torch.zeros(1, 3, size, size))  # materialise the lazy head
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2.0)
        models.append(net.eval())
    return models


def _channels_last(X):
    """The input layout the loop route gives a convolutional model on CPU."""
    return X.contiguous(memory_format=torch.channels_last) if X.ndim == 4 else X


def _plain_loop(models, X, y, layout=_channels_last):
    """The per-candidate loop of existing implementations: load_state_dict, eval, forward (the
    input in ``layout``)."""
    X = layout(X)
    target = copy.deepcopy(models[0])
    out = []
    with torch.no_grad():
        for m in models:
            target.load_state_dict(m.state_dict())
            target.eval()
            out.append(F.cross_entropy(target(X), y, reduction="sum").double() / y.shape[0])
    return torch.stack(out)


POOLS = {
    "k2 (rewritten)": nn.MaxPool2d(2),
    "k3 (rewritten)": nn.MaxPool2d(3),
    "k(2,1) (rewritten)": nn.MaxPool2d((2, 1)),
    "overlapping (as called)": nn.MaxPool2d(3, stride=2),
    "padded (as called)": nn.MaxPool2d(2, padding=1),
    "ceil mode (as called)": nn.MaxPool2d(2, ceil_mode=True),
}


@pytest.mark.parametrize("pool", list(POOLS))
def test_loop_route_equals_the_plain_loop_bit_for_bit(pool):
    models = _models(POOLS[pool])
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(23, 3, 17, 17, generator=g), torch.randint(0, 5, (23,), generator=g)
    ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y), method="loop")
    assert torch.equal(ev.loss, _plain_loop(models, X, y))


def loss_rtol(module: nn.Module, rows: int, classes: int) -> float:
    """Two float32 computations of one mean cross-entropy (other kernels or summation orders): each
    side rounds the forward's accumulations (the summed fan-in of its linear and convolution
    layers), the log-sum-exp over the classes and the sum over the rows, relative u = 2^-24 per
    term (first order)."""
    fan_in = sum(
        m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * math.prod(m.kernel_size)
        for m in module.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    )
    return 2 * (fan_in + classes + rows + 4) * 2.0**-24


def test_loop_route_in_channels_last_agrees_with_the_nchw_loop_to_float32_rounding():
    models = _models(nn.MaxPool2d(2), count=4)
    g = torch.Generator().manual_seed(12)
    X, y = torch.randn(29, 3, 17, 17, generator=g), torch.randint(0, 5, (29,), generator=g)
    ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y), method="loop")
    nchw = _plain_loop(models, X, y, layout=lambda x: x)
    torch.testing.assert_close(ev.loss, nchw, rtol=loss_rtol(models[0], 29, 5), atol=0)


class _ViewHead(nn.Module):
    """A CNN whose forward .view()s a convolution's output: impossible on channels_last input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        out = self.conv(x)
        return self.fc(out.view(out.shape[0], -1))


def test_a_forward_that_cannot_take_channels_last_gets_its_input_as_given():
    from fomo_core.adapters import torch_evaluate

    torch.manual_seed(13)
    models = [_ViewHead().eval() for _ in range(3)]
    g = torch.Generator().manual_seed(14)
    X, y = torch.randn(6, 3, 7, 7, generator=g), torch.randint(0, 3, (6,), generator=g)
    with pytest.raises(RuntimeError):  # the premise: the forward cannot take channels_last
        models[0](_channels_last(X))
    for _ in range(2):  # found out on the first call, remembered for the second
        ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y), method="loop")
        assert torch.equal(ev.loss, _plain_loop(models, X, y, layout=lambda x: x))
    assert torch_evaluate._TAKES_CHANNELS_LAST[models[0]] is False


@pytest.mark.parametrize("shape,kernel", [((2, 3, 9, 7), (2, 2)), ((3, 8, 8), (3, 3)), ((1, 2, 5, 6), (2, 3))])
def test_window_max_is_max_pool2d(shape, kernel):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x.view(-1)[::7] = float("nan")  # NaN propagates the same way
    x.view(-1)[1::11] = -0.0
    expected = F.max_pool2d(x, kernel)
    got = window_max(x, kernel)
    assert got.shape == expected.shape
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    finite = ~torch.isnan(expected)
    assert torch.equal(got[finite], expected[finite])


@pytest.mark.parametrize("candidates", ["flat", "state_dicts"])
def test_vmap_and_auto_agree_with_the_loop_to_float32_rounding(candidates):
    models = _models(nn.MaxPool2d(2))
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(31, 3, 17, 17, generator=g), torch.randint(0, 5, (31,), generator=g)
    given = (
        torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
        if candidates == "flat"
        else [m.state_dict() for m in models]
    )
    loop = evaluate_module(models[0], given, (X, y), method="loop")
    for method in ("vmap", "auto", "auto"):  # the second auto call uses the route the first measured
        ev = evaluate_module(models[0], given, (X, y), method=method)
        assert ev.method in (("vmap",) if method == "vmap" else ("loop", "vmap"))
        torch.testing.assert_close(ev.loss, loop.loss, rtol=1e-6, atol=0)
        assert torch.equal(ev.accuracy, loop.accuracy)


def test_bfloat16_autocast_is_opt_in_and_close():
    models = _models(nn.MaxPool2d(2))
    g = torch.Generator().manual_seed(5)
    X, y = torch.randn(16, 3, 17, 17, generator=g), torch.randint(0, 5, (16,), generator=g)
    sds = [m.state_dict() for m in models]
    exact = evaluate_module(models[0], sds, (X, y), method="loop")
    for method in ("loop", "vmap"):
        low = evaluate_module(models[0], sds, (X, y), method=method, autocast=torch.bfloat16)
        torch.testing.assert_close(low.loss, exact.loss, rtol=2e-2, atol=0)
        assert not torch.equal(low.loss, exact.loss)  # it did run in reduced precision
    with pytest.raises(ValueError, match="autocast must be None, torch.bfloat16 or torch.float16"):
        evaluate_module(models[0], sds, (X, y), autocast=torch.float64)


# --- early stopping --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_federation():
    """Five MLP candidates of distinct quality on a learnable problem, and a validation set."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 4, generator=g)
    X = torch.randn(600, 20, generator=g)
    y = (X @ W).argmax(1)
    models = []
    for k, steps in enumerate((0, 2, 5, 20, 60)):
        torch.manual_seed(k)
        net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(net.parameters(), lr=0.2)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(X[:300]), y[:300]).backward()
            opt.step()
        models.append(net)
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    return models, flat, (X[300:], y[300:])


@pytest.mark.parametrize("method", ["fused", "loop", "vmap"])
def test_early_stop_drops_only_candidates_above_the_baseline(mlp_federation, method):
    models, flat, val = mlp_federation
    full = evaluate_module(models[0], flat, val, method=method)
    baseline = float(full.loss[3])  # candidate 3 is the client: 0-2 are worse, 4 better
    ev = evaluate_module(models[0], flat, val, method=method, early_stop=EarlyStop(baseline, batch_size=30))
    assert isinstance(ev, EarlyStopped) and ev.method == method
    assert ev.stopped[:2].all() and not ev.stopped[4]  # far worse stopped; better kept
    assert (ev.samples[ev.stopped] < 300).all() and (ev.samples[~ev.stopped] == 300).all()
    assert (ev.loss[torch.from_numpy(ev.stopped)] > baseline).all()  # so their weight is 0, as in full
    kept = torch.from_numpy(~ev.stopped)
    torch.testing.assert_close(ev.loss[kept], full.loss[kept], rtol=1e-6, atol=0)  # another batch order only
    weights = [fc.compute_weights(flat[3], flat, baseline, e.loss.numpy()) for e in (full, ev)]
    np.testing.assert_array_equal(np.asarray(weights[0]) > 0, np.asarray(weights[1]) > 0)
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-5, atol=0)


def test_early_stop_never_stops_when_every_candidate_improves(mlp_federation):
    models, flat, val = mlp_federation
    ev = evaluate_module(models[0], flat, val, early_stop=EarlyStop(baseline_loss=100.0))
    assert not ev.stopped.any() and (ev.samples == 300).all()
    full = evaluate_module(models[0], flat, val)
    torch.testing.assert_close(ev.loss, full.loss, rtol=1e-6, atol=0)


def test_early_stop_when_all_stop_and_with_a_dataloader(mlp_federation):
    from torch.utils.data import DataLoader, TensorDataset

    models, flat, (X, y) = mlp_federation
    ev = evaluate_module(models[0], flat, (X, y), early_stop=EarlyStop(baseline_loss=-1.0, min_batches=2))
    assert ev.stopped.all() and (ev.samples == 64).all()  # two batches of 32, then nothing left to run
    loader = DataLoader(TensorDataset(X, y), batch_size=25)
    ev = evaluate_module(models[0], flat, loader, method="loop", early_stop=EarlyStop(baseline_loss=-1.0))
    assert ev.stopped.all() and (ev.samples == 100).all()  # the loader's batches: 4 of 25


def test_early_stop_options_are_checked():
    for z in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"early_stop.z must be a finite number in \(0.0, inf\]"):
            EarlyStop(1.0, z=z)
    with pytest.raises(TypeError, match=r"early_stop.z must be a real number, got str"):
        EarlyStop(1.0, z="3")
    with pytest.raises(ValueError, match=r"early_stop.baseline_loss must not be -inf"):
        EarlyStop(-math.inf)
    with pytest.raises(ValueError, match=r"early_stop.baseline_loss is beyond float64's range"):
        EarlyStop(10**400)
    with pytest.raises(ValueError, match=r"early_stop.seed must be an integer >= 0"):
        EarlyStop(1.0, seed=-1)
    with pytest.raises(TypeError, match=r"early_stop.batch_size must be an integer, got float"):
        EarlyStop(1.0, batch_size=32.0)
    with pytest.raises(ValueError, match=r"early_stop.min_batches must be an integer >= 2"):
        EarlyStop(1.0, min_batches=1)
    with pytest.raises(ValueError, match=r"early_stop.batch_size must be an integer >= 1"):
        EarlyStop(1.0, batch_size=0)
    with pytest.raises(TypeError, match=r"early_stop.baseline_loss must be a real number"):
        EarlyStop("1")
    with pytest.raises(TypeError, match=r"early_stop must be an EarlyStop or None"):
        evaluate_module(
            nn.Linear(2, 2), torch.zeros(1, 6), (torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)), early_stop=0.5
        )
    assert math.isfinite(EarlyStop(0.0).z)
    # numbers of any library are read as Python floats; a diverged baseline (NaN, +inf) stops nothing
    rule = EarlyStop(np.float32(0.5), z=torch.tensor(2.0))
    assert type(rule.baseline_loss) is float and type(rule.z) is float and rule.z == 2.0
    assert math.isnan(EarlyStop(math.nan).baseline_loss) and EarlyStop(math.inf).baseline_loss == math.inf


def test_rows_of_one_buffer_are_read_in_place():
    from fomo_core.adapters import torch_evaluate

    models = _models(nn.MaxPool2d(2))
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    rows = [flat[k] for k in range(len(models))]  # what a client passes: its candidate bank's rows
    cands = torch_evaluate._Candidates(models[0], rows)
    stacked, _ = cands.stacked()
    assert all(t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for t in stacked.values())
    apart = [row.clone() for row in rows]  # separate buffers: stacked by copying, same losses
    assert torch_evaluate._Candidates(models[0], apart).flat is None
    g = torch.Generator().manual_seed(6)
    X, y = torch.randn(9, 3, 17, 17, generator=g), torch.randint(0, 5, (9,), generator=g)
    for method in ("loop", "vmap"):
        by_rows = evaluate_module(models[0], rows, (X, y), method=method)
        assert torch.equal(by_rows.loss, evaluate_module(models[0], flat, (X, y), method=method).loss)
        assert torch.equal(by_rows.loss, evaluate_module(models[0], apart, (X, y), method=method).loss)


# --- the first layer shared by all candidates ------------------------------------------------------


def test_shared_first_layer_is_used_and_keeps_the_loop_bit_for_bit():
    from fomo_core.adapters import _torch_fast, torch_evaluate

    models = _models(nn.MaxPool2d(2), count=4)
    # in NCHW (a forward that cannot take channels_last), where the wide call of this layer gives
    # each candidate's output bit for bit (over channels_last input it does not for this layer)
    torch_evaluate._TAKES_CHANNELS_LAST[models[0]] = False
    g = torch.Generator().manual_seed(7)
    X, y = torch.randn(11, 3, 17, 17, generator=g), torch.randint(0, 5, (11,), generator=g)
    ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y), method="loop")
    assert torch.equal(ev.loss, _plain_loop(models, X, y, layout=lambda x: x))
    layer = _torch_fast.SharedFirstLayer.layers[models[0]][(tuple(X.shape), X.dtype, X.device, False)]
    assert layer[0] is F.conv2d and layer[1] == "0.weight" and layer[2] == "0.bias"  # found the first conv
    key = (F.conv2d, (4, 3, 3, 3), tuple(X.shape), X.dtype, X.device, 4, torch.get_num_threads())
    assert _torch_fast.SharedFirstLayer.exact[key] is True  # checked on the last candidate, then used


def test_shared_first_layer_steps_aside_where_it_would_change_a_bit(monkeypatch):
    from fomo_core.adapters import _torch_fast

    monkeypatch.setattr(_torch_fast.SharedFirstLayer, "exact", {})
    monkeypatch.setattr(_torch_fast, "same_bits", lambda a, b: False)  # as if the wide kernel rounded otherwise
    models = _models(nn.MaxPool2d(2), count=3)
    g = torch.Generator().manual_seed(8)
    X, y = torch.randn(5, 3, 17, 17, generator=g), torch.randint(0, 5, (5,), generator=g)
    for _ in range(2):  # decided once, then every forward runs as it is
        ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y), method="loop")
        assert torch.equal(ev.loss, _plain_loop(models, X, y))
    assert list(_torch_fast.SharedFirstLayer.exact.values()) == [False]


def test_a_first_layer_not_on_the_input_is_not_shared():
    from fomo_core.adapters import _torch_fast

    class Scaled(nn.Module):  # the first layer reads 2 * X, not X
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(2 * x)

    models = [Scaled() for _ in range(3)]
    X, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y), method="loop")
    expected = torch.stack([F.cross_entropy(m(X), y, reduction="sum").double() / 4 for m in models]).detach()
    assert torch.equal(ev.loss, expected)
    assert _torch_fast.SharedFirstLayer.layers[models[0]][(tuple(X.shape), X.dtype, X.device, False)] is None


# --- the route auto takes --------------------------------------------------------------------------


def test_auto_takes_the_loop_on_one_thread_without_timing(monkeypatch):
    from fomo_core.adapters import torch_evaluate

    monkeypatch.setattr(torch_evaluate, "_measure_routes", lambda *a: pytest.fail("timed on one thread"))
    models = _models(nn.MaxPool2d(2))
    X, y = torch.randn(6, 3, 17, 17), torch.randint(0, 5, (6,))
    assert evaluate_module(models[0], [m.state_dict() for m in models], (X, y)).method == "loop"


def test_auto_times_once_per_architecture_and_shape_in_the_process(monkeypatch, restore_torch_threads):
    """Every client of the same model reuses the first measurement (it is not kept per module)."""
    from fomo_core.adapters import torch_evaluate

    torch.set_num_threads(2)
    monkeypatch.setattr(torch_evaluate, "_measured_routes", {})
    timed = []
    measure = torch_evaluate._measure_routes
    monkeypatch.setattr(torch_evaluate, "_measure_routes", lambda *a: timed.append(1) or measure(*a))
    X, y = torch.randn(6, 3, 17, 17), torch.randint(0, 5, (6,))
    for _ in range(2):  # two clients: separate module instances of one architecture
        models = _models(nn.MaxPool2d(2))
        ev = evaluate_module(models[0], [m.state_dict() for m in models], (X, y))
        assert ev.method in ("loop", "vmap")
    assert len(timed) == 1
    evaluate_module(models[0], [m.state_dict() for m in models], (X[:5], y[:5]))  # another shape
    assert len(timed) == 2


# --- per-batch losses --------------------------------------------------------------------------------


def _cnn_no_bn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 7 * 7, 5))


def _batch_loop(models, X, y, size, training):
    """Each batch through each model on its own (no_grad; train mode on a copy, whose running
    statistics may move)."""
    out = []
    with torch.no_grad():
        for m in models:
            net = copy.deepcopy(m).train(training)
            out.append(
                [
                    F.cross_entropy(net(_channels_last(X[i : i + size])), y[i : i + size]).double()
                    for i in range(0, len(y), size)
                ]
            )
    return torch.tensor(out, dtype=torch.float64).T


@pytest.mark.parametrize("training", [False, True])
def test_evaluate_batches_one_forward_without_batchnorm(training):
    from fomo_core.adapters.torch_evaluate import evaluate_batches

    models = [_cnn_no_bn(s) for s in range(3)]
    g = torch.Generator().manual_seed(9)
    X, y = torch.randn(23, 3, 16, 16, generator=g), torch.randint(0, 5, (23,), generator=g)
    ev = evaluate_batches(models[0], [m.state_dict() for m in models], (X, y), batch_size=5, training=training)
    assert ev.loss.shape == (5, 3) and list(ev.sizes) == [5, 5, 5, 5, 3]
    # one forward over all 23 rows: the batch losses to float32 rounding of sums over 5 rows
    torch.testing.assert_close(ev.loss, _batch_loop(models, X, y, 5, training), rtol=1e-6, atol=0)
    dropped = evaluate_batches(models[0], [m.state_dict() for m in models], (X, y), batch_size=5, drop_last=True)
    assert list(dropped.sizes) == [5, 5, 5, 5]
    torch.testing.assert_close(dropped.loss, ev.loss[:4], rtol=1e-6, atol=0)


def test_evaluate_batches_in_train_mode_with_batchnorm_leaves_every_statistic():
    from fomo_core.adapters.torch_evaluate import evaluate_batches

    models = _models(nn.MaxPool2d(2))
    for m in models:
        m.train()
    g = torch.Generator().manual_seed(10)
    X, y = torch.randn(12, 3, 17, 17, generator=g), torch.randint(0, 5, (12,), generator=g)
    before = [copy.deepcopy(m.state_dict()) for m in models]
    ev = evaluate_batches(models[0], models, (X, y), batch_size=4, training=True)
    # batch statistics per batch of 4, each batch its own forward: the plain train-mode loop bit for bit
    assert torch.equal(ev.loss, _batch_loop(models, X, y, 4, True))
    for m, state in zip(models, before):
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), k  # no running statistic moved, the template's included
    with pytest.raises(ValueError, match="method='vmap' evaluates in eval mode"):
        evaluate_batches(models[0], models, (X, y), training=True, method="vmap")
    with pytest.raises(ValueError, match="data holds no samples"):
        evaluate_batches(models[0], models, (X[:0], y[:0]))


# --- rows per forward by default -------------------------------------------------------------------


def _wide_cnn(seed: int, padding=1) -> nn.Module:
    torch.manual_seed(seed)  # its first convolution's output: 64 x 32 x 32 float32 = 256 KiB per row
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=padding), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5)
    ).eval()


def test_default_rows_per_forward_keep_the_first_convolution_within_the_budget():
    from fomo_core.adapters.torch_evaluate import FORWARD_BYTES, _forward_rows

    X = torch.zeros(100, 3, 32, 32)
    assert _forward_rows(_wide_cnn(0), X) == FORWARD_BYTES // (64 * 32 * 32 * 4) == 16
    assert _forward_rows(_wide_cnn(0, padding="same"), X) == 16
    assert _forward_rows(_wide_cnn(0, padding="valid"), X) == FORWARD_BYTES // (64 * 30 * 30 * 4)
    strided = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.Flatten())
    assert _forward_rows(strided, X) == FORWARD_BYTES // (8 * 14 * 14 * 4)
    assert _forward_rows(nn.Sequential(nn.Flatten(), nn.Linear(3072, 2)), X) is None  # no convolution: one forward
    assert _forward_rows(nn.Sequential(nn.Conv2d(3, 2**20, 1)), X) == 1  # at least one row


def test_default_rows_per_forward_agree_with_one_forward_to_float32_rounding():
    from fomo_core.adapters.torch_evaluate import evaluate_batches

    models = [_wide_cnn(s) for s in range(3)]
    g = torch.Generator().manual_seed(15)
    X, y = torch.randn(40, 3, 32, 32, generator=g), torch.randint(0, 5, (40,), generator=g)
    sds = [m.state_dict() for m in models]
    ev = evaluate_module(models[0], sds, (X, y), method="loop")
    assert torch.equal(ev.loss, evaluate_module(models[0], sds, (X, y), method="loop", batch_size=16).loss)
    whole = evaluate_module(models[0], sds, (X, y), method="loop", batch_size=40)
    torch.testing.assert_close(ev.loss, whole.loss, rtol=loss_rtol(models[0], 40, 5), atol=0)
    # the batch losses of batches of 5, three batches (15 rows) per forward, against each batch alone
    per_batch = evaluate_batches(models[0], sds, (X, y), batch_size=5, method="loop")
    torch.testing.assert_close(
        per_batch.loss, _batch_loop(models, X, y, 5, False), rtol=loss_rtol(models[0], 5, 5), atol=0
    )


def test_batches_are_grouped_into_forwards_of_at_most_the_rows_given():
    from fomo_core.adapters.torch_evaluate import _grouped

    X, y = torch.arange(23.0)[:, None], torch.arange(23)
    chunks = _grouped(X, y, [5, 5, 5, 5, 3], 11)
    assert [c[2] for c in chunks] == [(5, 5), (5, 5), (3,)]
    assert torch.equal(torch.cat([c[0] for c in chunks]), X) and torch.equal(torch.cat([c[1] for c in chunks]), y)
    assert [c[2] for c in _grouped(X, y, [5, 5, 5, 5, 3], None)] == [(5, 5, 5, 5, 3)]
    assert [c[2] for c in _grouped(X, y, [20, 3], 4)] == [(20,), (3,)]  # a batch above the rows: its own forward
