"""The PyTorch adapter (fomo_core.adapters.torch_evaluate.evaluate_module) against the plain
per-candidate loop (load_state_dict + forward), on real torch models: an MLP and a small CNN with
BatchNorm whose running statistics differ per candidate.

Tolerance: float32 models, rtol 1e-5 / atol 1e-6 - vmap batches the candidates' matmuls and
convolutions into other kernels (and the fused route is fomo_core's own), so the sums are taken in
other orders than the single-model forward: a few eps32 relative per layer. The loop method runs
the same forward as the baseline but reduces the batch as sum / B (to combine batches) where the
baseline takes torch's float32 mean: rounding of the last digits only. Accuracies agree exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset

from fomo_core.adapters.torch_evaluate import evaluate_module

TOL = dict(rtol=1e-5, atol=1e-6)


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _cnn(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)
    )
    with torch.no_grad():  # distinct running statistics per candidate
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def _baseline(models, X, y, loss_fn=nn.functional.cross_entropy):
    """The per-candidate loop every existing implementation runs."""
    target = copy.deepcopy(models[0])
    losses, accs = [], []
    with torch.no_grad():
        for m in models:
            target.load_state_dict(m.state_dict())
            target.eval()
            out = target(X)
            losses.append(float(loss_fn(out, y)))
            accs.append(float((out.argmax(1) == y).double().mean()))
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


@pytest.fixture(scope="module")
def mlp_case():
    models = [_mlp(s) for s in range(4)]
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(90, 64, generator=g), torch.randint(0, 10, (90,), generator=g)
    return models, X, y


@pytest.fixture(scope="module")
def cnn_case():
    models = [_cnn(s) for s in range(3)]
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 5, (40,), generator=g)
    return models, X, y


@pytest.mark.parametrize("method", ["fused", "vmap", "loop", "auto"])
def test_mlp_methods_match_the_per_candidate_loop(mlp_case, method):
    models, X, y = mlp_case
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    ev = evaluate_module(models[0], flat, (X, y), method=method)
    loss, acc = _baseline(models, X, y)
    assert ev.method == ("fused" if method == "auto" else method)
    torch.testing.assert_close(ev.loss, loss, **TOL)
    torch.testing.assert_close(ev.accuracy, acc, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["state_dicts", "modules"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_cnn_with_batchnorm_uses_each_candidates_running_statistics(cnn_case, form, method):
    models, X, y = cnn_case
    candidates = [m.state_dict() for m in models] if form == "state_dicts" else models
    ev = evaluate_module(models[0], candidates, (X, y), method=method)
    loss, acc = _baseline(models, X, y)
    torch.testing.assert_close(ev.loss, loss, **TOL)
    torch.testing.assert_close(ev.accuracy, acc, rtol=0, atol=0)


def test_flat_candidates_take_the_modules_buffers(cnn_case):
    models, X, y = cnn_case
    template = models[0]
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    ev = evaluate_module(template, flat, (X, y))
    # the candidates' parameters with the template's BatchNorm statistics
    mixed = []
    for m in models:
        clone = copy.deepcopy(template)
        clone.load_state_dict({**template.state_dict(), **dict(m.named_parameters())})
        mixed.append(clone)
    loss, _ = _baseline(mixed, X, y)
    assert ev.method in ("loop", "vmap")  # not a dense Sequential: auto times both on CPU (module docstring)
    torch.testing.assert_close(ev.loss, loss, **TOL)


def test_dataloader_equals_tensor_pair_and_batches_are_combined_by_size(mlp_case):
    models, X, y = mlp_case
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    whole = evaluate_module(models[0], flat, (X, y), method="loop")
    loader = DataLoader(TensorDataset(X, y), batch_size=32)  # 32 + 32 + 26 rows
    for method in ("loop", "vmap", "fused"):
        batched = evaluate_module(models[0], flat, loader, method=method)
        torch.testing.assert_close(batched.loss, whole.loss, **TOL)
        torch.testing.assert_close(batched.accuracy, whole.accuracy, rtol=0, atol=1e-15)
    split = evaluate_module(models[0], flat, (X, y), batch_size=25, method="vmap")
    torch.testing.assert_close(split.loss, whole.loss, **TOL)


def test_soft_labels_leave_the_fused_route(mlp_case):
    models, X, y = mlp_case
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    soft = nn.functional.one_hot(y, 10).float() * 0.9 + 0.01  # class probabilities: cross_entropy's other form
    ev = evaluate_module(models[0], flat, (X, soft))
    assert ev.method in ("loop", "vmap")
    expected = torch.stack([nn.functional.cross_entropy(m(X), soft).detach().double() for m in models])
    torch.testing.assert_close(ev.loss, expected, **TOL)
    assert torch.isnan(ev.accuracy).all()


def test_user_loss_functions_per_sample_or_mean(mlp_case):
    models, X, y = mlp_case
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()

    def per_sample(out, target):
        return nn.functional.nll_loss(out.log_softmax(1), target, reduction="none")

    def mean_margin(out, target):
        return (out.max(1).values - out.gather(1, target[:, None])[:, 0]).mean()

    loss, _ = _baseline(models, X, y)
    ev = evaluate_module(models[0], flat, (X, y), loss_fn=per_sample)
    assert ev.method in ("loop", "vmap")  # a user loss never takes the fused route
    torch.testing.assert_close(ev.loss, loss, **TOL)
    margin, _ = _baseline(models, X, y, loss_fn=mean_margin)
    ev = evaluate_module(models[0], flat, (X, y), loss_fn=mean_margin, method="vmap")
    torch.testing.assert_close(ev.loss, margin, rtol=0, atol=1e-6)


def test_module_is_left_as_it_was(cnn_case):
    models, X, y = cnn_case
    template = models[0]
    template.train()
    template[1].eval()  # mixed flags must come back as they were
    before = {k: v.clone() for k, v in template.state_dict().items()}
    evaluate_module(template, [m.state_dict() for m in models], (X, y), method="vmap")
    evaluate_module(template, [m.state_dict() for m in models], (X, y), method="loop")
    assert template.training and not template[1].training and template[0].training
    for k, v in template.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics untouched: eval mode, no update
    template.eval()


def test_flat_views_are_not_copied(mlp_case):
    from fomo_core.adapters import torch_evaluate

    models, X, y = mlp_case
    flat = torch.stack([parameters_to_vector(m.parameters()) for m in models]).detach()
    cands = torch_evaluate._Candidates(models[0], flat)
    params, _ = cands.state(2)
    stacked, _ = cands.stacked()
    storage = flat.untyped_storage().data_ptr()
    tensors = list(params.values()) + list(stacked.values())
    assert tensors and all(t.untyped_storage().data_ptr() == storage for t in tensors)


def test_empty_candidates_and_errors(mlp_case):
    models, X, y = mlp_case
    P = sum(p.numel() for p in models[0].parameters())
    empty = evaluate_module(models[0], torch.zeros(0, P), (X, y))
    assert empty.loss.shape == (0,)
    with pytest.raises(ValueError, match=rf"candidates has shape \(2, 5\), expected \(M, {P}\)"):
        evaluate_module(models[0], torch.zeros(2, 5), (X, y))
    with pytest.raises(ValueError, match=r'candidates\[1\] has no entry "2.bias"'):
        sd = models[1].state_dict()
        del sd["2.bias"]
        evaluate_module(models[0], [models[0].state_dict(), sd], (X, y))
    with pytest.raises(TypeError, match=r"candidates mixes kinds"):
        evaluate_module(models[0], [models[0].state_dict(), models[1]], (X, y))
    with pytest.raises(ValueError, match=r"method must be one of"):
        evaluate_module(models[0], [models[0]], (X, y), method="fast")
    with pytest.raises(ValueError, match=r"method='fused' needs a dense nn.Sequential"):
        evaluate_module(_cnn(0), [_cnn(1)], (torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), method="fused")
    with pytest.raises(TypeError, match=r"data must be a pair \(X, y\) of tensors or an iterable"):
        evaluate_module(models[0], [models[0]], 3)
    with pytest.raises(TypeError, match=r"module must be a torch.nn.Module"):
        evaluate_module("net", [models[0]], (X, y))
