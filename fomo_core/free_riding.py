"""Free riders: clients that upload what they were sent instead of training on their own data.

A FedFomo client that skips local training uploads its federated update, ``theta_i + sum_n w_n
(theta_n - theta_i)``: a point of the affine hull of the models the server holds for it (its own
last upload) and for the candidates it sent it this round. Local training moves a model out of
that hull (M + 1 points in P >> M dimensions) by about as far as training moves it. So the
server can tell, from the upload alone: its distance from the hull, relative to its norm, is at
the level of float rounding for a free rider and at the level of a training step for an honest
client.

>>> distance = hull_distance(upload, server_rows)       # upload [P], rows [K, P]: own + sent
>>> free = distance <= FREE_RIDE_TOLERANCE

What it cannot tell: a free rider that adds noise of a training step's size to what it uploads
(its model then helps no one: the others' validation losses decide), or one that trains on
someone else's data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._models import as_float64
from ._validate import real

__all__ = ["hull_distance", "is_free_ride", "FREE_RIDE_TOLERANCE"]

# Relative distance at or below which an upload counts as a free ride: float32 rounding of an
# update leaves about 1e-7, 16-bit transport about 3e-4, and honest local training far more
# (benchmarks/bench_attacks.py measures every upload of its federations).
FREE_RIDE_TOLERANCE = 1e-3

_CHUNK = 1 << 16  # elements per pass: O(K * chunk) extra memory, never O(K * P)


def hull_distance(upload: Any, references: Any) -> float:
    """The distance from ``upload`` [P] to the affine hull of the ``references`` [K, P] (every
    point ``r_0 + sum_k w_k (r_k - r_0)``, any real weights), over the norm of the upload: 0 for an
    upload equal to a reference or mixing them; NaN when anything is not finite; the upload's
    distance to nothing (1.0) when K = 0. NumPy or torch; float64 sums, two passes over the
    rows in chunks."""
    size = int(upload.shape[0])
    if len(references) == 0:
        return 1.0 if size else 0.0
    k = len(references) - 1
    gram, rhs = np.zeros((k, k)), np.zeros(k)
    upload_sq = 0.0
    for start in range(0, size, _CHUNK):
        stop = min(start + _CHUNK, size)
        rows = as_float64(references[:, start:stop])
        target = as_float64(upload[start:stop])
        upload_sq += float(target @ target)
        diffs = rows[1:] - rows[0]
        gram += diffs @ diffs.T
        rhs += diffs @ (target - rows[0])
    if not (np.isfinite(gram).all() and np.isfinite(rhs).all() and np.isfinite(upload_sq)):
        return float("nan")
    weights = np.linalg.lstsq(gram, rhs, rcond=None)[0] if k else np.zeros(0)
    residual_sq = 0.0
    for start in range(0, size, _CHUNK):  # the residual itself, not |t|^2 - b.w (no cancellation)
        stop = min(start + _CHUNK, size)
        rows = as_float64(references[:, start:stop])
        residual = as_float64(upload[start:stop]) - rows[0] - weights @ (rows[1:] - rows[0])
        residual_sq += float(residual @ residual)
    if upload_sq == 0.0:
        return 0.0 if residual_sq == 0.0 else float("inf")
    return float(np.sqrt(residual_sq / upload_sq))


def is_free_ride(upload: Any, references: Any, *, tolerance: float = FREE_RIDE_TOLERANCE) -> bool:
    """Whether ``upload`` [P] is (up to ``tolerance``, relative) a mix of ``references`` [K, P]:
    the models the uploader was sent, and its own previous one. A non-finite upload is not a free
    ride (the clients' own checks reject it)."""
    tolerance = real(tolerance, "tolerance", low=0.0)
    distance = hull_distance(upload, references)
    return bool(distance <= tolerance)
