"""Regressions of hostile inputs: each test names the failure it pins (a crash, a silent wrong
answer, a lost checkpoint, a poisoned model taken), and failed before the fix beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import fomo_core as fc
from fomo_core import reference as ref
from fomo_core.adapters.torch import CandidateBank

HUGE = 10**400  # a Python int beyond float64's range


def run_python(code: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter, so that a crash fails this test instead of killing pytest.
    From outside the checkout: its fomo_core/ source folder would shadow the installed package."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.abspath(os.sep),
    )


# ---- evaluate_candidates: sizes whose products wrap ------------------------------------------


def test_huge_dense_sizes_are_refused_not_crashed():
    # Stride-0 tensors make 2**61-wide layers free; the parameter count (2**64 + 8) wrapped to 8,
    # matched the small [2, 8] candidates, and the kernels divided by a wrapped count (SIGFPE) or
    # overran their scratch (SIGSEGV).
    result = run_python(
        """
        import numpy as np, torch, fomo_core as fc
        cases = [
            ((2**61, 8), torch.zeros(1).expand(3, 2**61), torch.zeros(2, 8), np.zeros(3, np.int64)),
            ((7, 2**60, 8), torch.zeros(3, 7), torch.zeros(2, 8), np.zeros(3, np.int64)),
            ((1, 2**59, 1), torch.zeros(3, 1), torch.zeros(1).expand(2, 3 * 2**59 + 1), np.zeros(3)),
            ((2**40, 2**22, 1), torch.zeros(1).expand(1, 2**40), torch.zeros(1).expand(1, 2**62 + 2**22 * 2 + 1),
             np.zeros(1)),
        ]
        for sizes, X, C, y in cases:
            spec = fc.DenseSpec(sizes=sizes, output="softmax" if sizes[-1] > 1 else "squared_error")
            try:
                fc.evaluate_candidates(spec, C, X, y)
                print("accepted", sizes)
            except ValueError as e:
                print("ValueError", e)
        """
    )
    assert result.returncode == 0, f"crashed with {result.returncode}: {result.stderr[-2000:]}"
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4, result.stdout
    for line in lines:
        assert line.startswith("ValueError sizes are too large"), line


# ---- lazily negated (and conjugated) torch tensors ------------------------------------------------


def negated(values: torch.Tensor) -> torch.Tensor:
    """A real tensor equal to -values whose memory holds +values (the negative bit set)."""
    view = torch.complex(torch.zeros_like(values), values).conj().imag
    assert view.is_neg()
    return view


@pytest.mark.parametrize("where", ["local", "candidates", "out"])
def test_negative_bit_tensors_are_refused(where):
    x = torch.arange(6, dtype=torch.float32)
    c = torch.ones(2, 6)
    args = {"local": x, "candidates": c, "out": torch.full((6,), 7.0)}  # defined values: NaN != NaN
    args[where] = negated(args[where] if where != "out" else torch.zeros(6))
    before = [t.clone() for t in args.values()]
    with pytest.raises(ValueError, match="negative bit"):
        fc.fomo_step(args["local"], args["candidates"], 1.0, [0.5, 0.5], out=args["out"])
    with pytest.raises(ValueError, match="negative bit"):
        fc.apply_update(args["local"], args["candidates"], [0.5, 0.5], out=args["out"])
    for t, b in zip(args.values(), before):
        assert torch.equal(t.resolve_neg(), b.resolve_neg())


def test_negative_bit_in_dense_evaluation_is_refused():
    spec = fc.DenseSpec(sizes=(3, 2))
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"X is a torch tensor with its negative bit"):
        fc.evaluate_candidates(spec, torch.zeros(1, spec.num_params), negated(X), torch.zeros(4, dtype=torch.int64))


def test_negated_and_conjugated_small_inputs_are_read_by_value():
    # Losses, weights and sample weights are small: they are resolved, not refused. float64 views
    # were read un-negated before (wrong weights), and complex ones lost their imaginary part.
    x = torch.zeros(4, dtype=torch.float64)
    c = torch.stack([torch.full((4,), 1.0), torch.full((4,), 2.0)]).double()
    losses = negated(torch.tensor([1.0, 2.0], dtype=torch.float64))  # logically [-1, -2]
    got = fc.compute_weights(x, c, 0.0, losses)
    want = ref.compute_weights(x.numpy(), c.numpy(), 0.0, [-1.0, -2.0])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-15)
    update = fc.apply_update(x, c, negated(torch.tensor([0.5, 0.25], dtype=torch.float64)))
    np.testing.assert_allclose(update.numpy(), -(0.5 * 1 + 0.25 * 2) * np.ones(4), rtol=1e-15)
    with pytest.raises(TypeError, match="candidate_losses must hold real numbers"):
        fc.compute_weights(x, c, 0.0, torch.tensor([0.5, 1.0], dtype=torch.complex128).conj())


# ---- one rule for scalars and flags -----------------------------------------------------------


def _flat():
    return np.zeros(4), np.ones((2, 4))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda x, c: fc.compute_weights(x, c, HUGE, [0.5, 0.5]), "local_loss"),
        (lambda x, c: fc.compute_weights(x, c, 1.0, [HUGE, 0.5]), r"candidate_losses\[0\]"),
        (lambda x, c: fc.compute_weights(x, c, 1.0, np.array([HUGE, 1], dtype=object)), "candidate_losses"),
        (lambda x, c: fc.fomo_step(x, c, 1.0, [0.5, 0.5], eps=HUGE), "eps"),
        (lambda x, c: fc.apply_update(x, c, [HUGE, 0.0]), r"weights\[0\]"),
        (lambda x, c: fc.Affinity(3).select(0, 1, epsilon=HUGE), "epsilon"),
        (lambda x, c: fc.Affinity(3, epsilon=HUGE), "epsilon"),
        (lambda x, c: fc.Affinity(3).update(0, [1, 2], [HUGE, 0.0]), r"scores\[0\]"),
        (lambda x, c: fc.fomo_step(x, c, 1.0, [0.5, 0.5], max_distance=HUGE), "max_distance"),
    ],
)
def test_numbers_beyond_float64_are_value_errors(call, name):
    x, c = _flat()
    with pytest.raises((ValueError, TypeError), match=name):
        call(x, c)


@pytest.mark.parametrize("value", ["no", 1, None, np.array([True])])
def test_all_scores_must_be_a_boolean(value):
    x, c = _flat()
    with pytest.raises(TypeError, match="all_scores must be True or False"):
        fc.fomo_step(x, c, 1.0, [0.5, 0.5], all_scores=value)


@pytest.mark.parametrize(
    "losses",
    [
        torch.tensor([True, False]),
        torch.tensor([0.5 + 1j, 1.0]),
        np.array([True, False]),
        np.array([0.5 + 1j, 1.0]),
        [torch.tensor(True), 0.5],
        [torch.tensor(0.5 + 1j), 0.5],
        [np.bool_(True), 0.5],
    ],
)
def test_bool_and_complex_losses_are_refused_for_every_library(losses):
    x, c = _flat()
    with pytest.raises(TypeError, match="candidate_losses"):
        fc.compute_weights(x, c, 1.0, losses)


@pytest.mark.parametrize("loss", [torch.tensor(True), torch.tensor(1 + 1j), np.bool_(True), np.complex128(1)])
def test_bool_and_complex_local_loss_is_refused(loss):
    x, c = _flat()
    with pytest.raises(TypeError, match="local_loss must be a real number"):
        fc.compute_weights(x, c, loss, [0.5, 0.5])


# ---- out= on tensors autograd or inference mode owns -----------------------------------------


def test_out_refuses_a_parameter_of_a_live_graph():
    p = nn.Parameter(torch.zeros(4))
    loss = (p * p).sum()
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"out requires grad.*torch.no_grad"):
        fc.fomo_step(p, torch.ones(1, 4), 1.0, [0.5], out=p)
    assert torch.equal(p.detach(), before)
    loss.backward()  # the graph is intact


def test_out_under_no_grad_bumps_the_version_so_backward_notices():
    p = nn.Parameter(torch.zeros(4))
    loss = (p * p).sum()  # saves p for backward
    version = p._version
    with torch.no_grad():
        fc.apply_update(p, torch.ones(1, 4), [0.5], out=p)
    assert p._version > version
    assert torch.equal(p.detach(), torch.full((4,), 0.5))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_out_refuses_inference_tensors_outside_inference_mode():
    with torch.inference_mode():
        t = torch.zeros(4)
    with pytest.raises(ValueError, match="inference tensor"):
        fc.apply_update(t, torch.ones(1, 4), [0.5], out=t)
    assert torch.equal(t, torch.zeros(4))
    with torch.inference_mode():
        fc.apply_update(t, torch.ones(1, 4), [0.5], out=t)
    assert torch.equal(t, torch.full((4,), 0.5))


def test_out_in_a_state_dict_moves_the_parameters_version():
    model = nn.Linear(3, 2)
    state = model.state_dict()  # detached tensors sharing the parameters' version counters
    version = model.weight._version
    cands = [{k: torch.ones_like(v) for k, v in state.items()}]
    fc.fomo_step(state, cands, 1.0, [0.5], out=state)
    assert model.weight._version > version
    torch.testing.assert_close(model.weight.detach(), torch.ones(2, 3))


# ---- apply_update's range, sample weights near float64's maximum ------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_weights_beyond_float32_are_refused_for_32_and_16_bit_models(dtype):
    x = np.zeros(4, dtype)
    with pytest.raises(ValueError, match=r"weights\[0\] is 1e\+39, beyond float32's range"):
        fc.apply_update(x, x[None], [1e39])  # was NaN (0 * inf) or inf, silently


def test_weights_beyond_float32_are_exact_for_float64_models():
    x = np.zeros(4)
    c = np.full((1, 4), 2.0)
    np.testing.assert_array_equal(fc.apply_update(x, c, [1e39]), np.full(4, 2e39))


@pytest.mark.parametrize("scale", [1e307, 1e-320])
def test_sample_weights_near_float64_limits(scale):
    spec = fc.DenseSpec(sizes=(3, 4, 2))
    rng = np.random.default_rng(1)
    C = rng.standard_normal((2, spec.num_params))
    X = rng.standard_normal((40, 3))
    y = rng.integers(0, 2, 40)
    w = rng.uniform(0.5, 1.0, 40)
    want = fc.evaluate_candidates(spec, C, X, y, sample_weight=w)
    got = fc.evaluate_candidates(spec, C, X, y, sample_weight=w * scale)  # was NaN for 1e307
    # Subnormal weights carry fewer significant bits: relative error up to 2**-52 / (1e-320 / 5e-324).
    rtol = 1e-12 if scale > 1 else 1e-3
    np.testing.assert_allclose(got.loss, want.loss, rtol=rtol)
    np.testing.assert_allclose(got.accuracy, want.accuracy, rtol=rtol)


# ---- CandidateBank ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        lambda v: np.array(["a"] * v.numel()).reshape(v.shape),
        lambda v: torch.zeros(v.shape, dtype=torch.complex64),
        lambda v: torch.zeros(v.shape, device="meta"),
        lambda v: torch.zeros(v.shape, dtype=torch.bool),
    ],
)
def test_candidate_bank_fill_is_all_or_nothing(bad):
    model = nn.Linear(3, 2)
    bank = CandidateBank(model, 2)
    bank.fill([{k: torch.ones_like(v) for k, v in model.state_dict().items()}])
    before = bank.buffer.clone()
    good = {k: torch.full_like(v, 2.0) for k, v in model.state_dict().items()}
    broken = {k: bad(v) for k, v in model.state_dict().items()}
    with pytest.raises((TypeError, ValueError), match=r"models\[1\]"):
        bank.fill([good, broken])
    # bitwise: rows past `count` are uninitialised memory and may hold NaN, which torch.equal calls unequal
    assert torch.equal(bank.buffer.view(torch.uint8), before.view(torch.uint8))
    assert bank.count == 1


@pytest.mark.parametrize("rows", [[10**400], [0.5], ["0"], [True]])
def test_candidate_bank_fill_rows_refuses_non_integer_rows(rows):
    model = nn.Linear(3, 2)
    bank = CandidateBank(model, 2)
    table = torch.ones(4, bank.layout.size)
    with pytest.raises(TypeError, match="rows must be integer row indices"):
        bank.fill_rows(table, rows)  # 10**400 raised OverflowError, 0.5 was truncated to row 0


# ---- Affinity checkpoints -----------------------------------------------------------------------


def test_affinity_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "affinity.npz"
    first = fc.Affinity(4, seed=0)
    first.update(0, [1, 2], [0.5, -0.25])
    first.save(path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies in the middle of writing

    monkeypatch.setattr(np, "savez", killed)
    second = fc.Affinity(4, seed=1)
    with pytest.raises(KeyboardInterrupt):
        second.save(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(fc.Affinity.load(path).matrix, first.matrix)
    assert sorted(os.listdir(tmp_path)) == ["affinity.npz"]  # no temporary left behind


def _write_npz(path, entries: dict) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _meta(**changes) -> bytes:
    aff = fc.Affinity(2, seed=0)
    meta = {"format": "fomo_core.Affinity/1", "options": aff.options(), "rng": aff.rng.bit_generator.state}
    meta.update(changes)
    return _npy(np.array(json.dumps(meta)))


def _bomb_header(n: int) -> bytes:
    header = _npy(np.zeros((1, 1)))
    # declared shape (n, n), a few bytes of data only
    return header.replace(b"(1, 1)", f"({n}, {n})".encode()).replace(b"\x00" * 8, b"")


BAD_FILES = {
    "not-a-zip": (lambda p: p.write_bytes(b"hello"), "not a readable Affinity file"),
    "truncated": (lambda p: p.write_bytes(_good_bytes(p)[:200]), "not a readable Affinity file"),
    "missing-entry": (lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2)))}), "no meta.npy"),
    "nan": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.full((2, 2), np.nan)), "meta.npy": _meta()}),
        "NaN or infinite",
    ),
    "inf": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.full((2, 2), np.inf)), "meta.npy": _meta()}),
        "NaN or infinite",
    ),
    "complex": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2), complex)), "meta.npy": _meta()}),
        "dtype complex128",
    ),
    "not-square": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 3))), "meta.npy": _meta()}),
        r"shape \(2, 3\)",
    ),
    "bomb": (lambda p: _write_npz(p, {"matrix.npy": _bomb_header(20000), "meta.npy": _meta()}), "beyond the cap"),
    "short-data": (lambda p: _write_npz(p, {"matrix.npy": _bomb_header(2), "meta.npy": _meta()}), "truncated"),
    "meta-not-json": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2))), "meta.npy": _npy(np.array("{"))}),
        "not JSON",
    ),
    "meta-list": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2))), "meta.npy": _npy(np.array("[1]"))}),
        "format",
    ),
    "options-wrong": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2))), "meta.npy": _meta(options={"epsilon": "x"})}),
        "invalid options",
    ),
    "options-unknown": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2))), "meta.npy": _meta(options={"colour": 1})}),
        "invalid options",
    ),
    "rng-wrong": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2))), "meta.npy": _meta(rng={"bit_generator": "X"})}),
        "invalid options or generator",
    ),
    "object-meta": (
        lambda p: _write_npz(p, {"matrix.npy": _npy(np.zeros((2, 2))), "meta.npy": _npy(np.zeros(2))}),
        "dtype float64, expected text",
    ),
}


def _good_bytes(p) -> bytes:
    fc.Affinity(3, seed=0).save(p)
    return p.read_bytes()


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_affinity_load_says_what_is_wrong(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / f"{case}.npz"
    make(path)
    with pytest.raises((ValueError, TypeError), match=message) as info:
        fc.Affinity.load(path)
    assert str(path) in str(info.value)


def test_affinity_load_cap_is_adjustable(tmp_path):
    path = tmp_path / "a.npz"
    fc.Affinity(10, seed=0).save(path)
    with pytest.raises(ValueError, match="beyond the cap of 100 bytes"):
        fc.Affinity.load(path, max_bytes=100)
    assert fc.Affinity.load(path, max_bytes=800).num_clients == 10


# ---- the poisoned-client guard ----------------------------------------------------------------


def test_a_finite_poisoned_candidate_is_guarded_out():
    rng = np.random.default_rng(0)
    local = rng.standard_normal(50)
    honest = local + 0.1 * rng.standard_normal(50)
    poison = np.full(50, 1e30)
    cands = np.stack([honest, poison])
    # The poison (with a low loss: a lie, or a model tuned to the victim's data) is the only
    # improving candidate: without the guard it takes weight 1 and becomes the client's model.
    open_step = fc.fomo_step(local, cands, 1.0, [1.5, 0.0])
    np.testing.assert_array_equal(open_step.weights, [0.0, 1.0])
    np.testing.assert_array_equal(open_step.params, poison)
    guarded = fc.fomo_step(local, cands, 1.0, [1.5, 0.0], max_distance=10 * np.linalg.norm(local))
    np.testing.assert_array_equal(guarded.rejected, [False, True])
    np.testing.assert_array_equal(guarded.scores[1], 0.0)
    np.testing.assert_array_equal(guarded.weights, [0.0, 0.0])
    np.testing.assert_array_equal(guarded.params, local)


@pytest.mark.parametrize("all_scores", [True, False])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_guard_matches_the_reference(all_scores, norm):
    rng = np.random.default_rng(3)
    local = rng.standard_normal(37).astype(np.float32)
    cands = (local + rng.standard_normal((6, 37)) * rng.uniform(0.1, 10, (6, 1))).astype(np.float32)
    losses = rng.uniform(0, 2, 6)
    d = ref.candidate_distances(local, cands, norm=norm)
    bound = float(np.median(d))
    got = fc.fomo_step(local, cands, 1.5, losses, norm=norm, all_scores=all_scores, max_distance=bound)
    want = ref.fomo_step(local, cands, 1.5, losses, norm=norm, all_scores=all_scores, max_distance=bound)
    np.testing.assert_array_equal(got.rejected, want.rejected)
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-6)
    assert (got.rejected[got.distances > bound]).all()
    w = fc.compute_weights(local, cands, 1.5, losses, norm=norm, max_distance=bound)
    np.testing.assert_array_equal(w, got.weights)


def test_guard_off_by_default():
    # (the guard's rule in the shared element maths: test_math_shared.py)
    x, c = _flat()
    for bad in (-1.0, float("nan"), "far"):
        with pytest.raises((ValueError, TypeError), match="max_distance"):
            fc.first_order_scores(x, c, 1.0, [0.5, 0.5], max_distance=bad)
    np.testing.assert_array_equal(
        fc.compute_weights(x, c, 1.0, [0.5, 0.5], max_distance=float("inf")), fc.compute_weights(x, c, 1.0, [0.5, 0.5])
    )


# ---- the guard as part of the fomo-core round ---------------------------------------------------


def _round_with(policy, candidates, losses):
    """One client round under ``policy`` from the model linspace(-1, 1, 20) (loss 1.0)."""
    from fomo_core.round import federate

    params = np.linspace(-1.0, 1.0, 20)
    res = federate(
        policy,
        params,
        np.stack(candidates),
        lambda models: _by_value(models, candidates, losses),
        copy=lambda dst, src: np.copyto(dst, src),
    )
    return params, res


def _by_value(models, candidates, losses):
    """The validation losses: each candidate's given loss, 1.0 for the client's own model."""
    out = []
    for m in models:
        matches = [loss for c, loss in zip(candidates, losses) if np.array_equal(np.asarray(m), c)]
        out.append(matches[0] if matches else 1.0)
    return np.array(out), np.zeros(len(models))


def test_fomo_core_preset_guards_the_round_and_peer_presets_do_not():
    honest = np.linspace(-1.0, 1.0, 20) + 0.05
    poison = np.full(20, 1e30)
    guarded_policy = fc.get_preset("fomo-core").client
    assert guarded_policy.guard is not None
    assert all(fc.get_preset(name).client.guard is None for name in ("paper", "pfllib", "fl-bench"))
    params, res = _round_with(guarded_policy, [honest, poison], [1.5, 0.0])  # the poison is the only improving one
    np.testing.assert_array_equal(res.weights, [0.0, 0.0])
    np.testing.assert_array_equal(params, np.linspace(-1.0, 1.0, 20))
    params, res = _round_with(guarded_policy.replace(guard=None), [honest, poison], [1.5, 0.0])
    np.testing.assert_array_equal(res.weights, [0.0, 1.0])
    np.testing.assert_array_equal(params, poison)  # what the guard prevents


def test_simulator_attack_option_reports_honest_accuracy():
    from fomo_core.simulate.attacks import AttackSettings
    from fomo_core.simulate.experiment import ExperimentConfig, run_experiment
    from fomo_core.simulate.federation import FederationSettings
    from fomo_core.simulate.train_settings import TrainSettings

    fed = FederationSettings(
        rounds=2, m=2, attack=AttackSettings(kind="lying", attackers=2, diverging=1, diverge_round=0)
    )
    cfg = ExperimentConfig(
        clients=6,
        groups=3,
        methods=("fedfomo", "fedavg"),
        federation=fed,
        training=TrainSettings(epochs=1, hidden=(8,)),
    )
    results = run_experiment(cfg)
    attack = results["attack"]
    assert len(attack["attacker_ids"]) == 2 and len(attack["diverging_ids"]) == 1
    assert not set(attack["attacker_ids"]) & set(attack["diverging_ids"])
    fomo, avg = results["methods"]["fedfomo"], results["methods"]["fedavg"]
    assert avg["honest_final_accuracy"] < 0.5  # the 1e30 uploads take FedAvg's global model
    assert fomo["honest_final_accuracy"] > avg["honest_final_accuracy"]
    with pytest.raises(ValueError, match="kind must be one of"):
        AttackSettings(kind="meteor", attackers=1)
    # a grid file spells the attack as a dict
    assert FederationSettings(attack={"kind": "nan", "attackers": 1}).attack == AttackSettings(kind="nan", attackers=1)


@pytest.mark.parametrize(
    "upload, error",
    [
        (lambda s, init: s.receive(0, init, [1, 2], [HUGE, 0.0]), ValueError),  # OverflowError before
        (lambda s, init: s.receive(0, init, [1], [0.1], self_score=HUGE), ValueError),
        (lambda s, init: s.receive(0, init, [1.5], [0.1]), TypeError),  # truncated to client 1 before
        (lambda s, init: s.receive(0, init, [HUGE], [0.1]), TypeError),
        (lambda s, init: s.receive(0, np.zeros(5, bool), [1], [0.1]), TypeError),  # stored as 0/1 before
        (lambda s, init: s.receive(0, np.zeros(5, complex), [1], [0.1]), TypeError),
        (lambda s, init: s.receive(0, init, [1], torch.tensor([0.1 + 1j])), TypeError),
    ],
)
def test_server_uploads_follow_the_same_rule(upload, error):
    init = np.zeros(5, np.float32)
    server = fc.Server(4, init, m=2, seed=0)
    before = server.affinity.matrix.copy()
    with pytest.raises(error):
        upload(server, init)
    np.testing.assert_array_equal(server.affinity.matrix, before)


def test_plans_follow_the_same_rules():
    p = nn.Parameter(torch.zeros(4))
    cands = torch.stack([torch.ones(4), torch.full((4,), 1e30)])
    plan = fc.plan(p, cands, out=p)
    loss = (p * p).sum()
    with pytest.raises(ValueError, match=r"out requires grad"):
        plan.fomo_step(1.0, [0.5, 0.0])
    with pytest.raises(ValueError, match=r"beyond float32's range"):
        with torch.no_grad():
            plan.apply_update([1e39, 0.0])
    with pytest.raises(ValueError, match="local_loss is beyond float64's range"):
        plan.fomo_step(HUGE, [0.5, 0.0])
    version = p._version
    with torch.no_grad():
        res = plan.fomo_step(1.0, [1.5, 0.0], max_distance=10.0)  # the poison is the only improving one
    assert p._version > version
    np.testing.assert_array_equal(res.rejected.numpy(), [False, True])
    assert torch.equal(p.detach(), torch.zeros(4))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
