"""PyTorch adapter: a module's parameters as one flat buffer, a candidate bank and a FedFomo client.

>>> flat = flatten_module(model)                  # model's parameters are now views into `flat`
>>> bank = CandidateBank(model, capacity=5)       # preallocated [5, P]
>>> bank.fill([peer_state_dict, peer_model, peer_flat])
>>> client = FedFomoClient(model, val_data=(Xv, yv), train_data=(Xt, yt))
>>> client = FedFomoClient(model, (Xv, yv), (Xt, yt), preset="pfllib")   # PFLlib's round, exactly
>>> result = client.round(bank)                   # evaluate, weigh, update in place, train locally
>>> result = client.round(peer_modules)           # modules or state_dicts: read where they are

Everything here converts and dispatches; the maths lives in fomo_core (fomo_step) and the
candidate evaluation in :func:`evaluate_module`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .._optional import optional_import

with optional_import("fomo_core.adapters.torch"):
    import torch
    from torch import nn

from fomo_core._validate import count, real
from fomo_core.guard import GuardLayout, Link
from fomo_core.layout import offsets_of, split
from fomo_core.policy import ClientPolicy
from fomo_core.presets import client_policy
from fomo_core.round import ClientRound, as_float64, batch_loss, check_client_options, federate, train_client

from ._torch_batches import batches, check_pair
from .torch_evaluate import dense_spec, deprecated_name, evaluate_batches, evaluate_module

__all__ = [
    "FlatLayout",
    "flatten_module",
    "flat_layout",
    "guard_layout",
    "CandidateBank",
    "FedFomoClient",
    "ClientRound",
    "train_sgd",
    "evaluate_module",
    "evaluate_batches",
    "dense_spec",
]


# --- flat layout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlatLayout:
    """Where each tensor of a module lives in its flat buffer.

    names:    state_dict keys, in buffer order (parameters, then floating buffers if included)
    shapes:   their shapes
    offsets:  start of each in the flat buffer (elements)
    size:     P, the total number of elements
    dtype, device: of the flat buffer
    """

    names: tuple
    shapes: tuple
    offsets: tuple
    size: int
    dtype: torch.dtype
    device: torch.device

    def numel(self, k: int) -> int:
        """The number of elements of tensor ``k``."""
        return math.prod(self.shapes[k])

    def views(self, flat: torch.Tensor) -> dict:
        """name -> view into ``flat`` [P] with that tensor's shape (no copy)."""
        return dict(zip(self.names, split(flat, self.shapes, self.offsets)))


def _named_tensors(module: nn.Module, include_buffers: bool) -> list:
    """(name, tensor, is_parameter) of every distinct tensor to flatten, in ``named_parameters()``
    order (the order of ``parameters_to_vector`` and of the evaluation adapter), then the floating
    buffers in ``named_buffers()`` order."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    out = [(name, p, True) for name, p in module.named_parameters()]
    if include_buffers:
        out += [(name, b, False) for name, b in module.named_buffers() if b.is_floating_point()]
    return out


def _layout(entries: list) -> FlatLayout:
    if not entries:
        raise ValueError("module must have at least one floating-point parameter, got none")
    first = entries[0][1]
    for name, t, _ in entries:
        if not t.is_floating_point():
            raise TypeError(f"module parameter {name!r} has dtype {t.dtype}, expected a floating dtype")
        if t.dtype != first.dtype:
            raise TypeError(
                f"module parameter {name!r} has dtype {t.dtype}, expected {first.dtype} (the dtype of "
                f"{entries[0][0]!r}); one flat buffer needs one dtype"
            )
        if t.device != first.device:
            raise ValueError(
                f"module parameter {name!r} is on {t.device}, expected {first.device} (the device of {entries[0][0]!r})"
            )
    shapes = tuple(tuple(t.shape) for _, t, _ in entries)
    offsets, size = offsets_of(shapes)
    return FlatLayout(tuple(name for name, _, _ in entries), shapes, offsets, size, first.dtype, first.device)


def flat_layout(module: nn.Module, *, include_buffers: bool = False) -> FlatLayout:
    """The layout :func:`flatten_module` gives (or gave) ``module``'s tensors."""
    return _layout(_named_tensors(module, include_buffers))


# Operations f with f(a z) = a f(z) for a > 0: a unit scaled before them is scaled after them.
_HOMOGENEOUS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def guard_layout(module: nn.Module, *, include_buffers: bool = False) -> GuardLayout:
    """What the poisoned-client guard knows of ``module``'s flat buffer (:func:`flatten_module`'s
    layout): its tensors' shapes, and the links between layers of an ``nn.Sequential`` (nested
    ones included) whose Linear and (ungrouped) convolution layers follow each other through
    ReLU-like operations only (ReLU, LeakyReLU, pooling, flattening, dropout): their hidden units'
    balance is watched. Other modules get no links (the guard then bounds distances only)."""
    layout = flat_layout(module, include_buffers=include_buffers)
    index = {id(p): k for k, (_, p, _) in enumerate(_named_tensors(module, False))}
    links, previous = [], None
    for layer in _sequence(module) if isinstance(module, nn.Sequential) else ():
        if isinstance(layer, _WEIGHTED) and getattr(layer, "groups", 1) == 1:
            units = previous.weight.shape[0] if previous is not None else 0
            if previous is not None and units and layer.weight.shape[1] % units == 0:
                bias = index[id(previous.bias)] if previous.bias is not None else None
                links.append(Link(index[id(previous.weight)], bias, index[id(layer.weight)], "out_in"))
            previous = layer
        elif not isinstance(layer, _HOMOGENEOUS):
            previous = None  # anything else (normalisation, tanh, a custom module) breaks the chain
    return GuardLayout(layout.shapes, tuple(links))


def _sequence(module: nn.Sequential) -> Iterable[nn.Module]:
    for layer in module:
        yield from _sequence(layer) if isinstance(layer, nn.Sequential) else (layer,)


def _existing_flat(entries: list, layout: FlatLayout) -> Optional[torch.Tensor]:
    """The flat buffer the tensors already are views of, if they are laid out exactly as `layout`."""
    first = entries[0][1]
    storage = first.untyped_storage()
    base = first.storage_offset()
    for (_, t, _), off in zip(entries, layout.offsets):
        if (
            t.untyped_storage().data_ptr() != storage.data_ptr()
            or t.storage_offset() != base + off
            or not t.is_contiguous()
        ):
            return None
    if storage.nbytes() < (base + layout.size) * first.element_size():
        return None
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, base, (layout.size,))


class _FlatAlias:
    """What :func:`flatten_module` made of a module: the buffer it returned and the options, kept
    on the module (attribute ``_fomo_core_flat``) so that a conversion can carry the buffer along.

    Copies of the module (``copy.deepcopy``, pickling) get their own, separate tensors and no
    buffer: they carry an empty record and are ordinary modules."""

    def __init__(self, flat: Optional[torch.Tensor] = None, include_buffers: bool = False):
        self.flat = flat
        self.include_buffers = include_buffers

    def __deepcopy__(self, memo: dict) -> _FlatAlias:
        return _FlatAlias()

    def __reduce__(self) -> tuple:
        return (_FlatAlias, ())


_ALIAS_ATTRIBUTE = "_fomo_core_flat"


def _apply_keeping_flat(module: nn.Module, fn: Callable, *args: Any, **kwargs: Any) -> nn.Module:
    """``module._apply`` of a flattened module: the conversion (``.to()``, ``.double()``,
    ``.cuda()``, ...) as usual, then, if it gave the parameters new tensors, the module is
    flattened again and the tensor that flatten_module returned becomes the new buffer in place
    (``torch.utils.swap_tensors``), so that writing it keeps writing the model."""
    result = type(module)._apply(module, fn, *args, **kwargs)
    alias = module.__dict__.get(_ALIAS_ATTRIBUTE)
    if alias is None or alias.flat is None:
        return result
    entries = _named_tensors(module, alias.include_buffers)
    if _existing_flat(entries, _layout(entries)) is not None and _same_memory(entries[0][1], alias.flat):
        return result  # nothing moved (.to() to the dtype and device it already had)
    old = alias.flat
    new = flatten_module(module, include_buffers=alias.include_buffers)
    try:
        torch.utils.swap_tensors(old, new)
    except RuntimeError:
        raise RuntimeError(
            "the module was converted after flatten_module, and the buffer that flatten_module returned "
            "could not follow because views or weak references of it are held elsewhere: it no longer holds "
            "the model's parameters. Call flatten_module(module) again and use the buffer it returns."
        ) from None
    module.__dict__[_ALIAS_ATTRIBUTE] = _FlatAlias(old, alias.include_buffers)
    return result


def _same_memory(first: torch.Tensor, flat: torch.Tensor) -> bool:
    """Whether ``first`` starts where ``flat`` does (same device and dtype)."""
    return first.device == flat.device and first.dtype == flat.dtype and first.data_ptr() == flat.data_ptr()


def _shared_tensor(base: torch.Tensor) -> torch.Tensor:
    """A tensor over ``base``'s memory that is not a view of it: views would hold a reference to
    it, which swap_tensors refuses."""
    return torch.empty(0, dtype=base.dtype, device=base.device).set_(
        base.untyped_storage(), base.storage_offset(), (base.numel(),)
    )


def flatten_module(module: nn.Module, *, include_buffers: bool = False) -> torch.Tensor:
    """Moves ``module``'s parameters into one contiguous buffer and returns it, [P].

    Every parameter becomes a view into the buffer (the Parameter objects stay the same, so an
    optimizer built before or after keeps working), so writing the buffer (``fomo_step(...,
    out=flat)``) writes the model. Shared parameters appear once. ``include_buffers=True`` also
    moves the floating-point buffers (BatchNorm running statistics) in, after the parameters.
    All tensors must share one dtype and device. Calling it again returns the same buffer.

    The buffer follows the module through conversions: after ``module.to(...)``, ``.double()``,
    ``.cuda()`` or ``.half()`` the returned tensor *is* the module's new buffer (new dtype or
    device, same Python object), so code that holds it keeps writing the model. When it cannot
    follow (the caller keeps views or weak references of it) the conversion raises a
    RuntimeError instead of leaving a buffer that silently no longer writes the model. A
    conversion of a submodule alone (``module.fc.double()``) is not followed. A deep copy of a
    flattened module is an ordinary module with its own tensors (flatten the copy for its buffer).
    """
    entries = _named_tensors(module, include_buffers)
    layout = _layout(entries)
    flat = _existing_flat(entries, layout)
    alias = module.__dict__.get(_ALIAS_ATTRIBUTE)
    if flat is not None and alias is not None and alias.flat is not None and _same_memory(flat, alias.flat):
        flat = alias.flat  # the very tensor returned before, so that it keeps following conversions
    if flat is None:
        base = torch.empty(layout.size, dtype=layout.dtype, device=layout.device)
        views = layout.views(base)
        with torch.no_grad():
            for name, t, is_param in entries:
                views[name].copy_(t)
                if is_param:
                    t.data = views[name]
                else:
                    owner, _, attr = name.rpartition(".")
                    module.get_submodule(owner)._buffers[attr] = views[name]
        flat = _shared_tensor(base)
    module.__dict__[_ALIAS_ATTRIBUTE] = _FlatAlias(flat, include_buffers)
    if not isinstance(module.__dict__.get("_apply"), functools.partial):
        module.__dict__["_apply"] = functools.partial(_apply_keeping_flat, module)
    return flat


# --- candidate bank -------------------------------------------------------------------------------


class CandidateBank:
    """A preallocated [capacity, P] buffer of candidate models laid out like ``module``'s flat buffer.

    Fill it from state_dicts, modules or flat arrays (torch or NumPy, [P]); ``bank.candidates`` is
    the [M, P] view of the rows filled so far, ready for fomo_step or evaluation.
    """

    def __init__(self, module: nn.Module, capacity: int, *, include_buffers: bool = False):
        capacity = count(capacity, "capacity", type_error=ValueError)
        self.layout = flat_layout(module, include_buffers=include_buffers)
        self.capacity = capacity
        self.buffer = torch.empty((capacity, self.layout.size), dtype=self.layout.dtype, device=self.layout.device)
        self.count = 0

    @property
    def candidates(self) -> torch.Tensor:
        """The filled rows, [count, P] (a view of the buffer)."""
        return self.buffer[: self.count]

    def __len__(self) -> int:
        return self.count

    def clear(self) -> None:
        self.count = 0

    def add(self, model: Any) -> int:
        """Copies one model (state_dict, nn.Module or flat array [P]) into the next row; returns its row."""
        if self.count >= self.capacity:
            raise ValueError(f"model does not fit: the bank is full ({self.capacity} candidates)")
        self._write(self.buffer[self.count], self._prepare(model, f"model (candidate {self.count})"))
        self.count += 1
        return self.count - 1

    def fill(self, models: Iterable[Any]) -> torch.Tensor:
        """Replaces the bank's content with ``models``; returns ``candidates`` [M, P]."""
        if isinstance(models, (Mapping, nn.Module)) or (hasattr(models, "shape") and len(models.shape) == 1):
            raise TypeError(f"models must be a sequence of models, got a single {type(models).__name__}")
        models = list(models)
        if len(models) > self.capacity:
            raise ValueError(f"models has {len(models)} entries, more than the bank's capacity {self.capacity}")
        # Check and convert everything before the first write, so that a bad model leaves the bank as it was.
        prepared = [self._prepare(model, f"models[{m}]") for m, model in enumerate(models)]
        for m, tensors in enumerate(prepared):
            self._write(self.buffer[m], tensors)
        self.count = len(models)
        return self.candidates

    def fill_rows(self, table: torch.Tensor, rows: Any) -> torch.Tensor:
        """Replaces the content with rows ``rows`` of ``table`` [N, P] (one gather, no temporary)."""
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != self.layout.size:
            shape = tuple(table.shape) if hasattr(table, "shape") else type(table).__name__
            raise ValueError(f"table must be a torch tensor of shape (N, {self.layout.size}), got {shape}")
        if table.dtype != self.layout.dtype:
            raise TypeError(f"table has dtype {table.dtype}, expected {self.layout.dtype}")
        given = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        if given.size and given.dtype.kind not in "iu":
            raise TypeError(f"rows must be integer row indices, got dtype {given.dtype}")
        idx = torch.as_tensor(given.astype(np.int64), device=table.device)
        if idx.dim() != 1 or idx.numel() > self.capacity:
            raise ValueError(f"rows must be 1-D with at most {self.capacity} entries, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= table.shape[0]):
            raise ValueError(f"rows must be indices in [0, {table.shape[0]}), got {idx.tolist()}")
        torch.index_select(table, 0, idx, out=self.buffer[: idx.numel()])
        self.count = idx.numel()
        return self.candidates

    # A model is checked and converted fully (_prepare) before _write copies it.
    def _prepare(self, model: Any, role: str) -> Any:
        """The model's tensors (a dict by entry name, or one flat tensor), every one checked:
        shape, a real dtype, a device with data. Nothing is written here."""
        L = self.layout
        if isinstance(model, nn.Module):  # the entries the layout holds: parameters, then buffers
            entries = dict(model.named_parameters())
            if len(L.names) > len(entries):
                entries.update(model.named_buffers())
            model = entries
        if isinstance(model, Mapping):
            tensors = {}
            for name, shape in zip(L.names, L.shapes):
                if name not in model:
                    raise ValueError(f"{role} has no entry {name!r}")
                t = model[name]
                if not hasattr(t, "shape") or t.shape != shape:
                    got = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
                    raise ValueError(f"{role}[{name!r}] has shape {got}, expected {shape}")
                tensors[name] = self._real_tensor(t, f"{role}[{name!r}]")
            return tensors
        if hasattr(model, "shape") and hasattr(model, "dtype"):
            if tuple(model.shape) != (L.size,):
                raise ValueError(f"{role} has shape {tuple(model.shape)}, expected ({L.size},) (a flat model)")
            return self._real_tensor(model, role)
        raise TypeError(f"{role} must be a state_dict, an nn.Module or a flat array, got {type(model).__name__}")

    @staticmethod
    def _real_tensor(value: Any, role: str) -> torch.Tensor:
        try:
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{role} must hold real numbers, got dtype {getattr(value, 'dtype', '?')}") from None
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{role} must hold real numbers, got dtype {t.dtype}")
        if t.device.type == "meta":
            raise ValueError(f"{role} is a meta tensor (it holds no data)")
        return t

    def _write(self, row: torch.Tensor, tensors: Any) -> None:
        with torch.no_grad():
            if isinstance(tensors, dict):
                views = self.layout.views(row)
                for name in self.layout.names:
                    views[name].copy_(tensors[name])
            else:
                row.copy_(tensors)


# --- one FedFomo client ---------------------------------------------------------------------------


class _FlatSGD:
    """Plain SGD (no momentum, no weight decay) over parameters that are consecutive views of one
    buffer (a flattened module's): each step is ``param -= lr * grad`` element by element, as
    torch.optim.SGD computes it (so the same values bit for bit), in one call over the buffer
    instead of one per tensor. The gradients are views of one zeroed buffer, which backward
    accumulates into."""

    def __init__(self, flat: torch.Tensor, params: list, lr: float):
        self.flat, self.params, self.lr = flat, params, lr
        self.grad = torch.zeros_like(flat)
        offset = 0
        for p in params:
            p.grad = self.grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero_grad(self) -> None:
        self.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        self.flat.add_(self.grad, alpha=-self.lr)

    def close(self) -> None:
        """Drops the gradient views (and so the buffer)."""
        for p in self.params:
            p.grad = None


def _optimizer(module: nn.Module, lr: float, momentum: float, weight_decay: float) -> Any:
    """The flat SGD step where it gives torch.optim.SGD's values (every parameter trained, in one
    buffer, no momentum or weight decay: those torch skips for a parameter without a gradient in a
    step, which a flat step cannot tell from a zero one), else torch.optim.SGD."""
    entries = _named_tensors(module, include_buffers=False)
    flat = _existing_flat(entries, _layout(entries)) if entries else None
    if flat is None or momentum or weight_decay or not all(t.requires_grad for _, t, _ in entries):
        return torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return _FlatSGD(flat, [t for _, t, _ in entries], lr)


def train_sgd(
    module: nn.Module,
    data: Any,
    *,
    epochs: int = 1,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    loss_fn: Optional[Callable] = None,
    generator: Optional[torch.Generator] = None,
) -> None:
    """The default local training: ``epochs`` passes of minibatch SGD over ``data``.

    data: a pair of tensors (X [B, ...], y [B]), shuffled with ``generator`` into batches of
    ``batch_size``, or any iterable of (x, y) batches (a DataLoader).
    loss_fn: loss(outputs, targets), cross-entropy by default.

    The values are torch.optim.SGD's. For a flattened module (:func:`flatten_module`) without
    momentum and weight decay, a step updates the whole parameter buffer in one call.
    """
    loss_fn = nn.functional.cross_entropy if loss_fn is None else loss_fn
    opt = _optimizer(module, lr, momentum, weight_decay)
    was_training = module.training
    module.train()
    pair = check_pair(data)
    try:
        for _ in range(epochs):
            order = None if pair is None else torch.randperm(pair[0].shape[0], generator=generator)
            for x, y in batches(data, batch_size, order):
                opt.zero_grad()
                loss_fn(module(x), y).backward()
                opt.step()
    finally:
        module.train(was_training)
        if isinstance(opt, _FlatSGD):
            opt.close()


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _copy(dst: Any, src: Any) -> None:
    """copy(dst, src) of the round: a flat model, or a layer list tensor by tensor."""
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


class FedFomoClient:
    """One FedFomo client around a PyTorch model, running its preset's round exactly.

    Each :meth:`round` evaluates the baseline and the candidates on the validation data, weighs
    them and moves the model (:func:`fomo_core.round.federate`, in place through the flat
    buffer), then trains locally. What the baseline is, whether the client's own model is a
    candidate, what BatchNorm statistics become, and so on, is the preset's
    :class:`~fomo_core.ClientPolicy`.

    Candidates given as modules or state_dicts (a server's models, handed over by reference) are
    read where they are, never copied: evaluated through ``functional_call`` and combined by
    fomo_step over their tensors as a layer list (the guard's layer distances read them there
    too). They are copied (converted) into the client's candidate bank first only when a model is
    in another dtype or on another device than the client's, or when the round rescales them
    (rebalancing, on a model with linked layers) or moves toward a global model: those read flat
    models.

    module:          the client's model; its parameters (and, when the policy moves them, its
                     floating-point buffers) are flattened (:func:`flatten_module`)
    val_data:        validation data from the client's target distribution: a tensor pair
                     (X, y) or an iterable of (X, y) batches (a DataLoader)
    train_data:      local training data (tensor pair or DataLoader) for the default SGD loop
    preset:          a preset or its name (default "fomo-core"); ``policy`` overrides its client
                     policy
    train_fn:        ``train_fn(module)`` replaces the default loop (then train_data is not needed)
    global_train_data: what the copy of the server's global model trains on in the fomo-core
                     round (default: train_data), e.g. the training data and the validation data
                     together: the client's own model never sees its validation data, the global
                     model may (the default loop only)
    epochs, lr, momentum, weight_decay, batch_size: the default loop's settings
    loss_fn:         loss(outputs, targets) for evaluation and the default loop (cross-entropy)
    eval_batch_size: rows per validation batch when val_data is a tensor pair (the batch losses
                     of the "batch_mean"/"batch_sum_per_sample" policies; default: one batch)
    capacity:        rows of the internal candidate bank, used for candidates that must be copied
    seed:            seeds the default loop's shuffling
    """

    def __init__(
        self,
        module: nn.Module,
        val_data: Any,
        train_data: Any = None,
        *,
        preset: Any = "fomo-core",
        policy: Optional[ClientPolicy] = None,
        train_fn: Optional[Callable[[nn.Module], Any]] = None,
        global_train_data: Any = None,
        epochs: int = 1,
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        loss_fn: Optional[Callable] = None,
        eval_batch_size: Optional[int] = None,
        capacity: int = 16,
        seed: Optional[int] = None,
    ):
        self.policy = client_policy(preset, policy)
        check_client_options(train_fn, train_data, epochs, eval_batch_size, "the default SGD loop", global_train_data)
        count(batch_size, "batch_size", low=1, type_error=ValueError)
        if isinstance(val_data, (tuple, list)) and len(val_data) == 2 and hasattr(val_data[1], "shape"):
            if val_data[1].shape[0] == 0:
                raise ValueError("val_data holds no samples: FedFomo weighs the candidates by their validation loss")
        real(lr, "lr", low=0.0, low_open=True, type_error=ValueError)
        self.module = module
        carries = self.policy.carries_buffers
        self.params = flatten_module(module, include_buffers=carries)
        self.layout = flat_layout(module, include_buffers=carries)
        self.num_params = flat_layout(module).size  # the parameters lead the flat buffer
        self.measured = self.layout.size if self.policy.measure == "state" else self.num_params
        # the layers of the measured part, for the policy's guard
        self.guard_layout = guard_layout(module, include_buffers=self.policy.measure == "state")
        self.last_update = self.params.detach().clone() if self.policy.baseline == "last_update" else None
        self.val_data = val_data
        self.train_data = train_data
        self.global_train_data = global_train_data
        self.train_fn = train_fn
        self.train_options = dict(
            epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, loss_fn=loss_fn
        )
        self.loss_fn = loss_fn
        self.eval_batch_size = eval_batch_size
        self.bank = CandidateBank(module, capacity, include_buffers=carries)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @property
    def _rebalances(self) -> bool:
        """Whether the policy's guard rescales candidates (rebalancing, where the model has linked
        layers): it writes rescaled flat copies, so the candidates are read as flat models."""
        return self.policy.rebalance and bool(self.guard_layout.links)

    @property
    def loss_of_flat_alone(self) -> bool:
        """Whether a model's validation loss depends on its flat model alone, so that the training
        check may evaluate the model before training after it (:func:`fomo_core.round.train_round`):
        eval-mode evaluation, the default training loop (a ``train_fn`` may change anything), and
        no floating-point buffer outside the flat buffer (BatchNorm statistics training moves)."""
        outside = not self.policy.carries_buffers and any(b.is_floating_point() for b in self.module.buffers())
        return self.policy.evaluation == "eval" and self.train_fn is None and not outside

    def _candidates(self, candidates: Any, layer_lists: bool = True) -> Any:
        """The candidates as the round reads them: [M, P] (a bank's rows, the caller's tensor), a
        list of flat [P] models, or (with ``layer_lists``) per model the list of its tensors in the
        flat layout's order, all read where they are; or, when some model is in another dtype or
        on another device, or a layer list is not wanted, the rows of the candidate bank they were
        converted into."""
        if isinstance(candidates, CandidateBank):
            return candidates.candidates
        if isinstance(candidates, torch.Tensor):
            if candidates.dim() != 2 or candidates.shape[1] != self.params.numel():
                raise ValueError(f"candidates has shape {tuple(candidates.shape)}, expected (M, {self.params.numel()})")
            return candidates
        if not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
            raise TypeError(
                "candidates must be a CandidateBank, a tensor [M, P] or a sequence of models, "
                f"got {type(candidates).__name__}"
            )
        # every model is checked (shapes, real dtypes, data) before anything is read or written
        prepared = [self.bank._prepare(model, f"candidates[{m}]") for m, model in enumerate(candidates)]
        if (
            layer_lists
            and prepared
            and all(isinstance(t, dict) for t in prepared)
            and all(map(self._readable, prepared))
        ):
            return [[t[name].detach() for name in self.layout.names] for t in prepared]
        if all(isinstance(t, torch.Tensor) for t in prepared) and all(map(self._readable, prepared)):
            return [t.detach() for t in prepared]
        if len(candidates) > self.bank.capacity:
            self.bank = CandidateBank(self.module, len(candidates), include_buffers=self.policy.carries_buffers)
        for m, tensors in enumerate(prepared):
            self.bank._write(self.bank.buffer[m], tensors)
        self.bank.count = len(prepared)
        return self.bank.candidates

    def _readable(self, model: Any) -> bool:
        """Whether the round can read a prepared model in place: the client's dtype and device."""
        tensors = model.values() if isinstance(model, dict) else [model]
        return all(t.dtype == self.layout.dtype and t.device == self.layout.device for t in tensors)

    # --- evaluation ----------------------------------------------------------------------------

    def _as_models(self, models: list) -> list:
        """The models as the evaluator takes them: a layer list by name; a flat model as views of
        its parameters and buffers when the policy carries them (each candidate's own BatchNorm
        statistics), else as its parameter vector (the module's buffers)."""
        if models and isinstance(models[0], list):
            return [dict(zip(self.layout.names, m)) for m in models]
        if self.policy.carries_buffers and self.policy.evaluation == "eval":
            return [self.layout.views(m) for m in models]
        return [m[: self.num_params] for m in models]

    def evaluate(self, models: Any, data: Any = None) -> tuple:
        """(losses [K], accuracies [K]) float64 NumPy of K models (a [K, P] tensor, a list of flat
        [P] tensors or of layer lists in the flat layout's order) on ``data`` (default: the
        validation data, with the policy's evaluation mode and loss; given data: eval mode, the
        mean over its samples)."""
        models = list(models) if not isinstance(models, list) else models
        kwargs = {} if self.loss_fn is None else {"loss_fn": self.loss_fn}
        if data is not None or (self.policy.loss == "mean" and self.policy.evaluation == "eval"):
            ev = evaluate_module(
                self.module,
                self._as_models(models),
                self.val_data if data is None else data,
                batch_size=self.eval_batch_size,
                **kwargs,
            )
            return as_float64(ev.loss), as_float64(ev.accuracy)
        ev = evaluate_batches(
            self.module,
            self._as_models(models),
            self.val_data,
            batch_size=self.eval_batch_size,
            training=self.policy.evaluation == "train",
            drop_last=self.policy.drop_last == "if_batchnorm" and _has_batchnorm(self.module),
            **kwargs,
        )
        sizes = ev.sizes
        correct = (as_float64(ev.accuracy) * sizes[:, None]).sum(axis=0)
        return batch_loss(self.policy.loss, as_float64(ev.loss), sizes), correct / float(sizes.sum())

    # --- the round -----------------------------------------------------------------------------

    def get_flat(self) -> torch.Tensor:
        """A copy of the model's flat buffer, [P] (parameters, then the floating-point buffers
        when the policy moves them): what the client uploads."""
        return self.params.detach().clone()

    def set_flat(self, flat: Any) -> None:
        """Loads a flat model [P] (torch or NumPy) into the module; the next round measures from
        it (it is the last federated update too)."""
        flat = torch.as_tensor(flat)
        if tuple(flat.shape) != (self.params.numel(),):
            raise ValueError(f"flat has shape {tuple(flat.shape)}, expected ({self.params.numel()},)")
        with torch.no_grad():
            self.params.copy_(flat)
            if self.last_update is not None:
                self.last_update.copy_(flat)

    def train(self, data: Any = None) -> None:
        """Local training: the user's hook, or the default SGD loop on ``data`` (default: the
        training data)."""
        if self.train_fn is not None:
            self.train_fn(self.module)
        else:
            data = self.train_data if data is None else data
            train_sgd(self.module, data, generator=self.generator, **self.train_options)

    def _global(self, global_params: Any) -> Optional[torch.Tensor]:
        """The server's global model (a flat model like :meth:`get_flat`, a state_dict or a
        module) as a flat tensor like :meth:`get_flat` (None stays None)."""
        if global_params is None:
            return None
        if isinstance(global_params, (Mapping, nn.Module)):
            bank = CandidateBank(self.module, 1, include_buffers=self.policy.carries_buffers)
            return bank.fill([global_params])[0]
        g = torch.as_tensor(global_params)
        if tuple(g.shape) != (self.params.numel(),):
            raise ValueError(f"global_params has shape {tuple(g.shape)}, expected ({self.params.numel()},)")
        if not g.is_floating_point():
            raise TypeError(f"global_params must hold real floating-point values, got dtype {g.dtype}")
        return g.to(dtype=self.params.dtype, device=self.params.device)

    def update(self, candidates: Any, global_params: Any = None) -> ClientRound:
        """The federated half of a round, no training (``train_seconds`` is 0).

        candidates:    a CandidateBank, a tensor [M, P] laid out like :meth:`get_flat`, or a
                       sequence of models (state_dicts, modules or flat arrays), read where they
                       are (copied into the bank first when the policy's rebalancing or global
                       model needs flat models)
        global_params: the server's global model (``Server.global_params()``, flat [P] like
                       :meth:`get_flat`, or a state_dict), which the policy may move toward;
                       peers' presets ignore it
        """
        g = self._global(global_params)
        # rebalancing and the move toward g read flat models; the guard's distances read layer lists
        cands = self._candidates(candidates, layer_lists=g is None and not self._rebalances)
        params, baseline, measured = self.params, self.last_update, self.measured
        layout = self.guard_layout
        if isinstance(cands, list) and cands and isinstance(cands[0], list):
            # layer lists: the client's own models as the same lists of views (the update writes the
            # flat buffer through them); "measured" counts the parameter tensors that lead them
            params = list(self.layout.views(self.params).values())
            baseline = list(self.layout.views(self.last_update).values()) if self.last_update is not None else None
            measured = sum(1 for _ in self.module.parameters()) if self.measured < self.layout.size else None
        with torch.no_grad():
            res = federate(
                self.policy,
                params,
                cands,
                self.evaluate,
                baseline=baseline,
                measured=measured,
                layout=layout,
                copy=_copy,
                global_params=g,
            )
            res.params = self.params
            total = res.weights.sum() + (res.self_weight or 0.0)
            if self.policy.buffers == "scaled" and res.outcome == "updated":
                # FL-bench multiplies the buffers by the float32 sum of the normalised weights.
                for b in self.module.buffers():
                    if b.is_floating_point():
                        b.mul_(torch.tensor(total, dtype=torch.float32))
            if self.last_update is not None:
                self.last_update.copy_(self.params)
        return res

    def train_round(self, result: ClientRound, global_params: Any = None) -> ClientRound:
        """The training half of a round under the policy (:func:`fomo_core.round.train_round`):
        :meth:`train`, and with the fomo-core policy a trained copy of the global model
        (``result.global_update``) and the check that training did not worsen the validation loss.
        ``global_params``: the same global model :meth:`update` received."""
        g = self._global(global_params)
        train_client(self, result, copy=lambda dst, src: _copy_no_grad(dst, src), global_params=g)
        return result

    def round(self, candidates: Any, global_params: Any = None) -> ClientRound:
        """One whole FedFomo round: :meth:`update`, then :meth:`train_round`. ``ClientRound.params``
        is the model's live flat buffer (copy it to keep it); ``global_params``: the server's
        global model [P], when it keeps one."""
        return self.train_round(self.update(candidates, global_params), global_params)


def _copy_no_grad(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def __getattr__(name: str) -> Any:
    return deprecated_name(__name__, name)
