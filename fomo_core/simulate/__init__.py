"""A small federated-learning simulator to see FedFomo at work and compare it with FedAvg and
purely local training: partitioners, per-client splits, two model backends, the methods, metrics.

partition.py    which samples each client holds (latent groups, pathological, Dirichlet)
data.py         datasets and per-client train / val / test splits, target distributions
backends.py     torch and scikit-learn clients built from fomo_core.adapters
federation.py   the rounds of FedFomo, FedAvg and Local
metrics.py      per-round records and the within-group affinity fraction
experiment.py   one run end to end (what ``fomo-core demo`` calls)
"""

from .experiment import ExperimentConfig, run_experiment
from .federation import FederationSettings
from .backends import TrainSettings

__all__ = ["ExperimentConfig", "FederationSettings", "TrainSettings", "run_experiment"]
