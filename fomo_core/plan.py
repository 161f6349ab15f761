"""Plans: the ops for a client that calls them every round on the same arrays.

Every op reads each array of its models (pointer, shape, strides, dtype) and cuts them into runs,
about 1-3 µs per array, which dominates small models passed as layer lists. A client's layout never
changes between rounds: its parameters are trained in place and its candidates are copied into the
same buffers (``adapters.torch.CandidateBank``), so a :class:`Plan` reads the arrays once and keeps
the run table. Each call only rechecks that every array still has the pointer, shape, strides and
dtype the table was built from, and that every container entry still holds the same array; when
anything changed the plan is rebuilt from the same containers before the call runs. A plan never
reads memory its arrays no longer designate.

>>> plan = fomo_core.plan(model_params, bank_models, out=model_params)   # in place
>>> for round in rounds:
...     fill_candidates(bank_models)                                      # same buffers, new values
...     res = plan.fomo_step(local_loss, candidate_losses)                # res.params is model_params

Host arrays only: for CUDA arrays a plan calls the ops as they are (no table is kept).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _C
from . import ops as _ops
from ._models import Structure, check_writable, is_array, mark_written
from ._validate import flag, real_vector
from .choices import Norm
from .ops import Scores, StepResult, _Call, _norm_code, _step_options

__all__ = ["Plan", "plan"]


def _entries(structure: Structure, model: Any, leaves: list) -> list:
    """(container, key, leaf) for each floating leaf of a layer-list model and (container, None,
    length) for the container itself: what ties the run table to the caller's containers."""
    if structure.kind == "flat":
        return []
    floating = [k for k, f in zip(structure.keys, structure.floating) if f]
    return [(model, None, len(model))] + [(model, k, leaf) for k, leaf in zip(floating, leaves)]


class Plan:
    """The run table of one local model, its M candidates and an output, kept between calls.

    local_params:     the client's model: flat [P], or a sequence or mapping of layer arrays
    candidate_params: [M, P] for a flat model, or a sequence of M models laid out like local_params
    out:              where updates go: local_params itself (in place), another model of the same
                      layout, or None for a model the plan allocates (``plan.params``, made again
                      only when the plan rebuilds itself; its non-floating entries are copied from
                      local_params at every update)

    The ops take what their module-level namesakes take after the models, and give the same results
    bit for bit. Arrays may change their values between calls, not their layout; a changed layout
    (a new array in a container, a resized or re-pointed tensor) is noticed and the plan rebuilds
    itself, with the full checks of the ops.
    """

    def __init__(self, local_params: Any, candidate_params: Any, *, out: Any = None):
        self._local, self._candidates, self._out = local_params, candidate_params, out
        self._build()

    def _build(self) -> None:
        call = _Call(self._local, self._candidates)
        self.params, out_float = call.output(self._out, writing_now=False)
        self._out_float = out_float
        self._call = call
        self._native = None
        if call.cuda is None:
            entries = _entries(call.structure, self._local, call.local)
            if self._out is not None and self._out is not self._local:
                entries += _entries(call.structure, self._out, out_float)
            if isinstance(self._candidates, (list, tuple)) or not is_array(self._candidates):
                entries.append((self._candidates, None, len(self._candidates)))
                for m, leaves in enumerate(call.candidates):
                    model = self._candidates[m]
                    entries.append((self._candidates, m, model))
                    entries += _entries(call.structure, model, leaves)
            self._native = _C.Plan(call.local, call.candidates, out_float, call.structure.names, entries)

    @property
    def num_runs(self) -> int:
        """Runs in the table (stretches of elements laid out alike in every array); 0 for CUDA."""
        return 0 if self._native is None else int(self._native.num_runs)

    def _run(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """The native op over the kept table; None when there is no table (CUDA) or the arrays
        keep changing under the plan (a container building new arrays on every access)."""
        for _ in range(2):
            if self._native is None:
                return None
            result = getattr(self._native, op)(*args, **kwargs)
            if result is not None:
                return result
            self._build()
        return None

    def _refresh_nonfloating(self) -> None:
        """The plan's own output takes local_params' current non-floating entries, as a new one would."""
        if self._out is not None or all(self._call.structure.floating):
            return
        for key, floating in zip(self._call.structure.keys, self._call.structure.floating):
            if not floating:
                dst, src = self.params[key], self._local[key]
                if isinstance(dst, np.ndarray):
                    np.copyto(dst, src)
                else:
                    dst.copy_(src)

    def _unplanned(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """The op itself, for a call whose arrays no longer match the plan (the op checks them all)."""
        return getattr(_ops, op)(self._local, self._candidates, *args, **kwargs)

    def _writing(self) -> None:
        """What every write rechecks: torch's in-place rules may change with grad/inference mode."""
        check_writable(self._out_float, self._call.structure.names)

    def _step(
        self, local_loss, candidate_losses, norm, eps, all_scores, update, max_distance=None
    ) -> Optional[tuple[Any, Scores]]:
        options = _step_options(local_loss, candidate_losses, norm, eps, all_scores, max_distance)
        if update:
            self._writing()
        raw = self._run("fomo_step", update=update, **options)
        if raw is not None and update:
            mark_written(self._out_float)
        return None if raw is None else self._call.scores(*raw)

    def candidate_distances(self, *, norm: Norm = "l2") -> Any:
        """[M] float64 distances of the candidates to the local model (see fomo_core.candidate_distances)."""
        d = self._run("candidate_distances", _norm_code(norm))
        if d is None:
            return self._unplanned("candidate_distances", norm=norm)
        return self._call.vector(d)

    def first_order_scores(
        self,
        local_loss: float,
        candidate_losses: Any,
        *,
        norm: Norm = "l2",
        eps: float = 0.0,
        max_distance: Optional[float] = None,
    ) -> Scores:
        """Raw scores of every candidate (see fomo_core.first_order_scores)."""
        done = self._step(local_loss, candidate_losses, norm, eps, True, False, max_distance)
        if done is None:
            return self._unplanned(
                "first_order_scores", local_loss, candidate_losses, norm=norm, eps=eps, max_distance=max_distance
            )
        return done[1]

    def compute_weights(
        self,
        local_loss: float,
        candidate_losses: Any,
        *,
        norm: Norm = "l2",
        eps: float = 0.0,
        max_distance: Optional[float] = None,
        return_scores: bool = False,
    ) -> Any:
        """[M] normalised weights, or ``(weights, scores)`` with ``return_scores=True`` (see
        fomo_core.compute_weights)."""
        with_scores = flag(return_scores, "return_scores")
        done = self._step(local_loss, candidate_losses, norm, eps, with_scores, False, max_distance)
        if done is None:
            return self._unplanned(
                "compute_weights",
                local_loss,
                candidate_losses,
                norm=norm,
                eps=eps,
                max_distance=max_distance,
                return_scores=with_scores,
            )
        weights = self._call.vector(done[0])
        return (weights, done[1]) if with_scores else weights

    def apply_update(self, weights: Any) -> Any:
        """theta_i + sum_n w_n (theta_n - theta_i) into the plan's output, which it returns."""
        w = real_vector(weights, "weights")
        self._writing()
        if self._run("apply_update", w) is None:
            return self._unplanned("apply_update", w, out=self.params)
        mark_written(self._out_float)
        self._refresh_nonfloating()
        return self.params

    def fomo_step(
        self,
        local_loss: float,
        candidate_losses: Any,
        *,
        norm: Norm = "l2",
        eps: float = 0.0,
        all_scores: bool = True,
        max_distance: Optional[float] = None,
    ) -> StepResult:
        """The fused step into the plan's output (see fomo_core.fomo_step); ``.params`` is that output."""
        done = self._step(local_loss, candidate_losses, norm, eps, all_scores, True, max_distance)
        if done is None:
            return self._unplanned(
                "fomo_step",
                local_loss,
                candidate_losses,
                norm=norm,
                eps=eps,
                all_scores=all_scores,
                out=self.params,
                max_distance=max_distance,
            )
        self._refresh_nonfloating()
        weights, s = done
        return StepResult(self.params, self._call.vector(weights), s.scores, s.distances, s.rejected, s.skipped)


def plan(local_params: Any, candidate_params: Any, *, out: Any = None) -> Plan:
    """A :class:`Plan` over these arrays: the ops without the per-array intake of every call."""
    return Plan(local_params, candidate_params, out=out)
