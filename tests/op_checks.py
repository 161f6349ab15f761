"""What the property tests of every step op check besides closeness (test_candidate_distances.py,
test_apply_update.py, test_fomo_step.py): result types and shapes, the output's structure, and that
no input buffer (nor out outside its views) was written."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from strategies import LEAF_VIEWS, Case, bits, entries, untouched_outside

OUT_MODES = ("new", "separate", "inplace")


def assert_vector_type(case: Case, v, dtype) -> None:
    """Per-candidate results come back as the caller's array type: [M] float64 (or bool); a model
    without any array (an empty layer list) gives NumPy."""
    if case.backend == "torch" and case.layout.shapes:
        assert isinstance(v, torch.Tensor) and v.dtype == dtype[1], (type(v), getattr(v, "dtype", None))
    else:
        assert isinstance(v, np.ndarray) and v.dtype == dtype[0], (type(v), getattr(v, "dtype", None))
    assert tuple(v.shape) == (case.m,)


F64 = (np.float64, torch.float64)
BOOL = (np.bool_, torch.bool)


def assert_inputs_unchanged(case: Case, before: list, in_place: bool = False) -> None:
    """No input buffer changed anywhere, except, when the local model is also `out`, the local
    model's views themselves (never its buffers around them)."""
    local_ids = {id(p.view) for p in case.placed[: sum(case.layout.floating)]}  # built first
    for p, b in zip(case.placed, before):
        if in_place and id(p.view) in local_ids:
            assert untouched_outside(p, b), "the local model was written outside its view"
        else:
            assert np.array_equal(bits(p.base), b), "an input buffer was written"


def assert_same_structure(case: Case, params) -> None:
    """The output model has the local model's container, shapes, dtypes and array type, and copies
    of its non-floating entries."""
    layout = case.layout
    if layout.kind == "flat":
        assert type(params) is type(case.local)
    elif layout.kind == "dict":
        assert isinstance(params, dict) and list(params) == layout.keys
    else:
        assert type(params) is (tuple if layout.kind == "tuple" else list)
        assert len(params) == len(layout.shapes)
    for new, old, floating in zip(entries(layout, params), entries(layout, case.local), layout.floating):
        assert type(new) is type(old) and tuple(new.shape) == tuple(old.shape) and new.dtype == old.dtype
        if not floating:
            assert np.array_equal(np.asarray(new), np.asarray(old))


def make_out(case: Case, mode: str, data) -> tuple:
    """(out argument, its Placed leaves, their buffers' bits before the call)."""
    if mode == "new":
        return None, [], []
    if mode == "inplace":
        return case.local, [], []
    views = [data.draw(st.sampled_from(LEAF_VIEWS)) for _ in range(max(1, sum(case.layout.floating)))]
    out, placed = case.make_out(views)
    return out, placed, [bits(p.base) for p in placed]
