"""Two facts behind the round benchmark's ratios (benchmarks/bench_round.py), measured.

- ``counts``: how many models each part of a real fomo-core round evaluates (the simulator on
  scikit-learn's digits, 15 clients, M = 5, 10 rounds, preset "fomo-core" with its global model):
  FedFomo's evaluation of the baseline and candidates, the move toward the global model (its mixes,
  and the updated model when the update moved it) and the training check; with the rounds by
  outcome. The check's second forward (the model before training) is needed only where nothing
  else evaluated that model.
- ``parts``: the fomo-core client's phases in the round benchmark's case (``--subject``, ``--m``)
  with its guard's rebalancing on (the preset), off, and with no guard at all: what the
  rebalancing costs in "weights+update". One thread, the benchmark's CPU clock, interleaved
  rounds, medians.

    python benchmarks/probe_round_parts.py counts
    python benchmarks/probe_round_parts.py parts --subject "digits MLP" --m 5
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_round import OURS, Case  # noqa: E402

import fomo_core  # noqa: E402


def counts(rounds: int = 10) -> dict:
    """{(caller, models evaluated): calls} over a simulator run, and {(outcome, moved toward g): rounds}."""
    import fomo_core.adapters.torch as torch_adapter
    from fomo_core import round as round_module
    from fomo_core.simulate.experiment import ExperimentConfig, run_experiment
    from fomo_core.simulate.federation import FederationSettings

    calls, outcomes = collections.Counter(), collections.Counter()
    evaluate, train_round = torch_adapter.FedFomoClient.evaluate, round_module.train_round

    def counted_evaluate(self, models, data=None):
        caller = sys._getframe(1).f_code.co_name
        calls[(caller, len(models))] += 1
        return evaluate(self, models, data)

    def counted_train_round(policy, params, result, *args, **kwargs):
        outcomes[(result.outcome, bool(result.global_step))] += 1
        return train_round(policy, params, result, *args, **kwargs)

    torch_adapter.FedFomoClient.evaluate, round_module.train_round = counted_evaluate, counted_train_round
    try:
        settings = FederationSettings(rounds=rounds, m=5, preset="fomo-core")
        run_experiment(ExperimentConfig(dataset="digits", clients=15, methods=("fedfomo",), federation=settings))
    finally:
        torch_adapter.FedFomoClient.evaluate, round_module.train_round = evaluate, train_round
    return {"evaluate calls by (caller, models)": dict(calls), "rounds by (outcome, moved toward g)": dict(outcomes)}


def parts(subject: str, m: int, repeats: int) -> dict:
    """Median CPU ms of the fomo-core client's phases with the preset's guard, without its
    rebalancing, and without a guard."""
    torch.set_num_threads(1)
    fomo_core.set_num_threads(1)
    case = Case(subject, m, quick=False)
    client = case.clients[OURS]
    policy = client.policy
    variants = {
        "preset": policy,
        "no rebalancing": policy.replace(rebalance=False),
        "no guard": policy.replace(rebalance=False, guard=None),
    }
    runs: dict = {name: [] for name in variants}
    for r in range(repeats + 2):  # two warm-up rounds each
        for name, p in variants.items():
            client.policy = p
            case.reset()
            result = case.run_fomo(OURS)
            if r >= 2:
                runs[name].append(result)
    client.policy = policy
    phases = ("eval", "weights+update", "copies", "train")
    return {name: {k: 1e3 * statistics.median(x[k] for x in rs) for k in phases} for name, rs in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("counts", "parts"))
    parser.add_argument("--subject", default="digits MLP")
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args(argv)
    if args.what == "counts":
        for key, table in counts().items():
            print(f"{key}: {table}")
    else:
        for name, t in parts(args.subject, args.m, args.repeats).items():
            print(f"{args.subject}, M = {args.m}, {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
