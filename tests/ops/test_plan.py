"""Plans (fomo_core.plan): the same results as the ops bit for bit, and every change of layout under
a plan noticed (a plan never reads memory its arrays no longer designate)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from strategies import Case, bits, cases, flat_values

import fomo_core as fc


def torch_model(shapes, seed: int, scale: float = 1.0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(s, generator=gen) for s in shapes]


SHAPES = [(6, 3, 5, 5), (6,), (40, 12), (12,), (3, 40)]
LOSSES = np.array([0.5, 0.7, 1.5, 0.6])


def problem(m: int = 4):
    local = torch_model(SHAPES, 0)
    candidates = [[x + 0.1 * y for x, y in zip(local, torch_model(SHAPES, 10 + k))] for k in range(m)]
    return local, candidates


def assert_same_step(got: fc.StepResult, want: fc.StepResult) -> None:
    for name in ("weights", "scores", "distances", "rejected", "skipped"):
        assert np.array_equal(bits(getattr(got, name)), bits(getattr(want, name))), name
    for a, b in zip(got.params, want.params):
        assert np.array_equal(bits(a), bits(b))


@settings(max_examples=150)
@given(case=cases())
def test_plan_ops_equal_the_ops_bit_for_bit(case: Case):
    """Every op through a plan, on every kind of input the ops take, gives the ops' bits."""
    args = (case.local_loss, case.losses)
    options = dict(norm=case.norm, eps=case.eps)
    plan = fc.plan(case.local, case.candidates)
    want = fc.fomo_step(case.local, case.candidates, *args, **options, all_scores=case.all_scores)
    got = plan.fomo_step(*args, **options, all_scores=case.all_scores)
    for name in ("weights", "scores", "distances", "rejected", "skipped"):
        assert np.array_equal(bits(getattr(got, name)), bits(getattr(want, name))), name
    assert np.array_equal(bits(flat_values(case.layout, got.params)), bits(flat_values(case.layout, want.params)))
    assert np.array_equal(
        bits(plan.compute_weights(*args, **options)),
        bits(fc.compute_weights(case.local, case.candidates, *args, **options)),
    )
    assert np.array_equal(
        bits(plan.candidate_distances(norm=case.norm)),
        bits(fc.candidate_distances(case.local, case.candidates, norm=case.norm)),
    )
    scores = plan.first_order_scores(*args, **options)
    assert np.array_equal(
        bits(scores.scores), bits(fc.first_order_scores(case.local, case.candidates, *args, **options).scores)
    )
    updated = plan.apply_update(case.weights)
    expected = fc.apply_update(case.local, case.candidates, case.weights)
    assert np.array_equal(bits(flat_values(case.layout, updated)), bits(flat_values(case.layout, expected)))


def test_plan_follows_values_across_rounds_in_place():
    """A client's round: candidates refilled in place, the model updated in place through the plan."""
    local, candidates = problem()
    twin_local = [x.clone() for x in local]
    plan = fc.plan(local, candidates, out=local)
    for round_ in range(3):
        for k, model in enumerate(candidates):
            for x, y in zip(model, torch_model(SHAPES, 100 * round_ + k)):
                x.add_(0.1 * y)
        got = plan.fomo_step(1.0, LOSSES)
        want = fc.fomo_step(twin_local, candidates, 1.0, LOSSES, out=twin_local)
        assert got.params is local
        assert_same_step(got, want)


def test_plan_notices_a_replaced_entry_and_uses_the_new_array():
    local, candidates = problem()
    state = OrderedDict((f"layer{i}", x) for i, x in enumerate(local))
    models = [OrderedDict(zip(state, model)) for model in candidates]
    plan = fc.plan(state, models)
    runs = plan.num_runs
    models[2]["layer2"] = models[2]["layer2"] * 3.0  # a new tensor in the same dict
    got = plan.fomo_step(1.0, LOSSES)
    want = fc.fomo_step(state, models, 1.0, LOSSES)
    assert np.array_equal(bits(got.distances), bits(want.distances))
    assert plan.num_runs == runs
    models.append(OrderedDict(models[0]))  # one more candidate
    assert plan.compute_weights(1.0, np.append(LOSSES, 0.9)).shape == (5,)


@pytest.mark.parametrize("change", ["data", "resize", "transpose", "set", "dtype"])
def test_plan_notices_a_tensor_changed_in_place(change):
    """Tensor metadata changed under the same Python object: a new pointer (``.data =``, ``set_``),
    a new shape (``resize_``), new strides (``t_``) or a new dtype. The plan must read what the
    tensor designates now, exactly as the ops do."""
    local, candidates = problem()
    plan = fc.plan(local, candidates)
    plan.fomo_step(1.0, LOSSES)
    victim = candidates[1][2]  # (40, 12)
    if change == "data":
        victim.data = victim.data * 2.0
    elif change == "resize":
        victim.resize_(12, 40)  # same storage and pointer, another shape: the call must refuse it
    elif change == "transpose":
        victim.t_()
    elif change == "set":
        victim.set_(torch.full((40, 12), 7.0))
    elif change == "dtype":
        victim.data = victim.data.double()
    try:
        want = fc.fomo_step(local, candidates, 1.0, LOSSES)
    except (ValueError, TypeError) as error:
        with pytest.raises(type(error), match=r"candidate_params\[1\]\[2\]"):
            plan.fomo_step(1.0, LOSSES)
        return
    assert_same_step(plan.fomo_step(1.0, LOSSES), want)


def test_plan_notices_numpy_changes():
    rng = np.random.default_rng(0)
    local = [rng.standard_normal((20, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    candidates = [[x + rng.standard_normal(x.shape).astype(np.float32) for x in local] for _ in range(3)]
    plan = fc.plan(local, candidates, out=local)
    losses = np.array([0.5, 0.6, 0.7])
    candidates[0][0] = np.asfortranarray(candidates[0][0] * 2)  # a new array, another layout
    expected = fc.fomo_step([x.copy() for x in local], candidates, 1.0, losses)
    got = plan.fomo_step(1.0, losses)
    assert np.array_equal(bits(got.weights), bits(expected.weights))
    for a, b in zip(local, expected.params):
        assert np.array_equal(bits(a), bits(b))
    local[1].flags.writeable = False  # the output became read-only: refused like the ops refuse it
    with pytest.raises(ValueError, match=r"out\[1\] is read-only"):
        plan.fomo_step(1.0, losses)


def test_plan_own_output_takes_the_current_integer_entries():
    """out=None: the plan's own output, whose non-floating entries follow local_params."""
    local, candidates = problem()
    state = {"w": local[2], "steps": torch.tensor(3)}
    models = [{"w": c[2], "steps": torch.tensor(0)} for c in candidates]
    plan = fc.plan(state, models)
    state["steps"].fill_(5)
    res = plan.fomo_step(1.0, LOSSES)
    assert res.params is plan.params and int(res.params["steps"]) == 5
    assert torch.equal(res.params["w"], fc.fomo_step(state, models, 1.0, LOSSES).params["w"])


def test_plan_without_update_target_refuses_nothing_it_cannot_do():
    """A read-only plan over read-only arrays still measures; its update target is its own."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(50)
    c = rng.standard_normal((3, 50))
    x.flags.writeable = False
    c.flags.writeable = False
    plan = fc.plan(x, c)
    assert np.array_equal(plan.candidate_distances(), fc.candidate_distances(x, c))
    assert plan.params is not x and plan.apply_update([0.5, 0.0, 0.0]) is plan.params


# ---- layouts: runs merge across any layout the arrays share, never one per short row ----


def fortran(shape, seed: int) -> torch.Tensor:
    return torch_model([shape[::-1]], seed)[0].t()  # a transposed (column-major) view


def test_fortran_order_layers_shared_by_every_array_are_one_run_each():
    shapes = [(100_000, 4), (3, 50_000)]
    local = [fortran(s, i) for i, s in enumerate(shapes)]
    candidates = [[fortran(s, 10 * k + i) for i, s in enumerate(shapes)] for k in range(3)]
    out = [fortran(s, 99) for s in shapes]
    assert fc.plan(local, candidates, out=out).num_runs == len(shapes)
    # and the numbers are those of the same values in C order
    contiguous = fc.fomo_step(
        [x.contiguous() for x in local], [[c.contiguous() for c in m] for m in candidates], 1.0, [0.5, 0.6, 0.7]
    )
    strided = fc.fomo_step(local, candidates, 1.0, [0.5, 0.6, 0.7], out=out)
    np.testing.assert_allclose(strided.distances.numpy(), contiguous.distances.numpy(), rtol=1e-12)
    for a, b in zip(strided.params, contiguous.params):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_one_fortran_candidate_among_c_order_ones_costs_few_runs():
    """Layouts the arrays do not share: runs along the longest dimension, not one per short row."""
    local = torch_model([(100_000, 4)], 0)[0]
    candidates = [[torch_model([(100_000, 4)], k)[0]] for k in range(1, 4)] + [[fortran((100_000, 4), 7)]]
    plan = fc.plan([local], candidates)
    assert plan.num_runs <= 4  # one per column at most (it was 100,000)
    got = plan.candidate_distances()
    want = fc.candidate_distances(local.reshape(-1), torch.stack([c[0].reshape(-1) for c in candidates]))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


def test_sliced_rows_shorter_than_a_run_are_read_along_columns():
    """A view with gaps between short rows (x[:, :3] of a (N, 4) buffer) in every array."""
    base = [torch_model([(50_000, 4)], k)[0] for k in range(3)]
    views = [b[:, :3] for b in base]
    plan = fc.plan([views[0]], [[views[1]], [views[2]]])
    assert plan.num_runs <= 3
    want = fc.candidate_distances(views[0].reshape(-1), torch.stack([views[1].reshape(-1), views[2].reshape(-1)]))
    np.testing.assert_allclose(plan.candidate_distances().numpy(), want.numpy(), rtol=1e-12)


# ---- bfloat16 differences whose float32 squares underflow ----


@pytest.mark.parametrize("scale", [1e-18, 1e-20, 1e-22, 1e-25, 1e-30, 1e-38])
def test_bfloat16_distances_of_tiny_differences(scale):
    """Differences below 1e-19 square into float32's subnormals (below 1e-23 into zero): the
    distance must still be within the tolerance table."""
    from tolerances import assert_vector_close, distance_rtol

    from fomo_core import reference as ref

    gen = torch.Generator().manual_seed(3)
    local = (scale * torch.randn(4096, generator=gen)).to(torch.bfloat16)
    candidates = (local.float() + scale * torch.randn(3, 4096, generator=gen)).to(torch.bfloat16)
    candidates[2] = local  # identical: distance 0
    got = fc.candidate_distances(local, candidates)
    want = ref.candidate_distances(local, candidates)
    assert want[0] > 0
    assert_vector_close("distances", got, want, distance_rtol(4096, "bfloat16"))


class InterfaceOnly:
    """An array known only by __array_interface__ (no buffer protocol): the plan's generic recheck."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def __array_interface__(self):
        return self.array.__array_interface__

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype


def test_plan_rechecks_arrays_known_only_by_their_interface():
    rng = np.random.default_rng(2)
    local = [InterfaceOnly(rng.standard_normal((8, 3))), InterfaceOnly(rng.standard_normal(5))]
    candidates = [[InterfaceOnly(rng.standard_normal(a.shape)) for a in local] for _ in range(2)]
    plan = fc.plan(local, candidates)
    want = fc.candidate_distances(local, candidates)
    assert np.array_equal(plan.candidate_distances(), want)
    candidates[1][0].array = rng.standard_normal((8, 3))  # the same object now points elsewhere
    assert np.array_equal(plan.candidate_distances(), fc.candidate_distances(local, candidates))
    assert not np.array_equal(plan.candidate_distances(), want)
