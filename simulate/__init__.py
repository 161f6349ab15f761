"""The simulator wing: a small federated-learning simulator to see FedFomo at work and compare it
with baselines, with its command line and plots. It sits above the core and the adapters and
imports them as any user would; neither imports it (``python -m fomo_core`` is the one door from
the core into it). Installed as ``fomo_core.simulate`` from the source folder ``simulate/``.

partition.py        which samples each client holds (latent groups, LG-FedAvg class shards,
                    Dirichlet, feature-clustered latent distributions)
data.py             datasets (digits, MNIST-5k, CIFAR-10) and per-client train / val / test splits,
                    target distributions, label noise, a cap on training samples
train_settings.py   local training (epochs, learning rate, momentum, batch, hidden layers)
backends.py         the model backends by name, each imported when it runs:
torch_backend.py    PyTorch clients (fomo_core.adapters.torch)
sklearn_backend.py  scikit-learn clients (fomo_core.adapters.numpy)
attacks.py          attackers and diverging clients
federation.py       the rounds of FedFomo, FedAvg and Local
baselines.py        FedAvg + local fine-tuning, the per-group FedAvg oracle
metrics.py          per-round records (accuracy after the update and after local training) and the
                    within-group affinity fraction
experiment.py       one run end to end (what ``fomo-core demo`` calls)
runner.py           a grid of settings x methods x seeds, resumable (``fomo-core experiment``)
files.py            atomic writes of the outputs
plots.py            the demo's and the grid's figures (matplotlib)
cli.py              the ``fomo-core`` command line (demo, experiment, info, bench)
"""

from .experiment import ExperimentConfig, run_experiment
from .federation import FederationSettings
from .train_settings import TrainSettings

__all__ = ["ExperimentConfig", "FederationSettings", "TrainSettings", "run_experiment"]
