"""How closely each peer preset reproduces its peer: the largest differences over the parity
tests' client rounds (MLP and BatchNorm CNN, M = 1, 3, 5, per case), and the federation tests.

    python benchmarks/parity_table.py
"""

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "core")]  # the shared helpers; the parity tests
import peers  # noqa: E402
import test_presets_parity as t  # noqa: E402

torch.set_num_threads(1)
d = load_digits()
x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(d.target)
groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
member = [torch.isin(y, torch.tensor(g)) for g in groups]
data = (
    (x[member[0]][:90], y[member[0]][:90]),
    [(x[m][100 + 60 * k : 160 + 60 * k], y[m][100 + 60 * k : 160 + 60 * k]) for m in member for k in range(2)],
)


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max()) if a.numel() else 0.0


table = {}
for preset in ("paper", "pfllib", "fl-bench"):
    rows = {}
    for kind in ("mlp", "cnn"):
        for case in t.CASES:
            for m in (1, 3, 5):
                s = t.scenario(kind, case, m, data)
                if preset == "pfllib":
                    cands, ids = (
                        (s["others"][:1], s["ids"][:1])
                        if m == 1
                        else ([*s["others"][: m - 1], s["current"]], [*s["ids"][: m - 1], 0])
                    )
                    loader = peers.batches(*s["val"], 32, drop_last=peers.has_batchnorm(s["current"]))
                    model, _, wv = peers.pfllib_client_round(s["current"], s["last_update"], ids, cands, loader, 6)
                    theirs_state, theirs_scores = model.state_dict(), wv[ids]
                    ours, res = t.our_update("pfllib", s, cands)
                    ours_scores = res.scores
                elif preset == "fl-bench":
                    own = s["current"].state_dict()
                    names = [n for n, _ in s["current"].named_parameters()]
                    sel = {cid: {k: c.state_dict()[k] for k in names} for cid, c in zip(s["ids"], s["others"])}
                    sel[0] = own
                    theirs_state, w = peers.flbench_client_round(
                        own, sel, 0, s["current"], peers.batches(*s["val"], 32)
                    )
                    theirs_scores = np.array([w[c] for c in [*s["ids"], 0]])
                    ours, res = t.our_update("fl-bench", s, [*s["others"], s["current"]])
                    ours_scores = res.scores
                else:
                    row = np.zeros(6)
                    row[0] = 0.1
                    theirs_state, _, deltas = peers.paper_client_round(
                        s["last_update"],
                        [s["current"], *s["others"]],
                        [0, *s["ids"]],
                        peers.batches(*s["val"], 32),
                        row,
                    )
                    theirs_scores = np.array(deltas)
                    ours, res = t.our_update("paper", s, s["others"])
                    ours_scores = np.array([res.self_score, *res.scores])
                pnames = {n for n, _ in s["current"].named_parameters()}
                pd = max(rel(ours[k], v) for k, v in theirs_state.items() if k in pnames)
                bd = max(
                    [rel(ours[k], v) for k, v in theirs_state.items() if k not in pnames and v.is_floating_point()]
                    or [0.0]
                )
                f = np.isfinite(theirs_scores)
                sd = (
                    float(np.max(np.abs(ours_scores[f] - theirs_scores[f]) / (np.abs(theirs_scores[f]) + 1e-6)))
                    if f.any()
                    else 0.0
                )
                key = {
                    "mixed": "weights/params",
                    "nothing_helps": "nothing helps",
                    "equal": "equal to baseline",
                    "nan": "NaN",
                }[case]
                r = rows.setdefault(key, [0, 0, 0])
                r[:] = max(r[0], pd), max(r[1], bd), max(r[2], sd)
    table[preset] = rows
for p, rows in table.items():
    for k, (pd, bd, sd) in rows.items():
        print(f"{p:9s} {k:18s} params max|d| {pd:.1e}  buffers max|d| {bd:.1e}  scores rel {sd:.1e}")
for name, fn in (
    ("pfllib", t.test_pfllib_federation),
    ("fl-bench", t.test_flbench_federation),
    ("paper", t.test_paper_federation),
):
    fn(data)
    print(name, "federation test passed (selections equal; affinity within rtol 1e-4)")
