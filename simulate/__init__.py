"""A small federated-learning simulator to see FedFomo at work and compare it with baselines:
partitioners, per-client splits, two model backends, the methods, metrics, an experiment runner.

partition.py    which samples each client holds (latent groups, LG-FedAvg class shards,
                Dirichlet, feature-clustered latent distributions)
data.py         datasets (digits, MNIST-5k, CIFAR-10) and per-client train / val / test splits,
                target distributions, label noise, a cap on training samples
backends.py     the model backends by name (torch, sklearn: they live in fomo_core.adapters)
federation.py   the rounds of FedFomo, FedAvg and Local
baselines.py    FedAvg + local fine-tuning, the per-group FedAvg oracle
metrics.py      per-round records (accuracy after the update and after local training) and the
                within-group affinity fraction
experiment.py   one run end to end (what ``fomo-core demo`` calls)
runner.py       a grid of settings x methods x seeds, resumable (``fomo-core experiment``)
files.py        atomic writes of the outputs
"""

from .backends import TrainSettings
from .experiment import ExperimentConfig, run_experiment
from .federation import FederationSettings

__all__ = ["ExperimentConfig", "FederationSettings", "TrainSettings", "run_experiment"]
