"""Framework adapters, installed as ``fomo_core.adapters`` and imported one by one so that only
the frameworks you use get loaded:

- ``fomo_core.adapters.torch``: flatten_module, CandidateBank, FedFomoClient, evaluate_module
- ``fomo_core.adapters.numpy``: layer lists <-> flat buffers, scikit-learn MLPClassifier clients
- ``fomo_core.adapters.flower``: a FedFomo strategy for Flower's Message API and ClientApps around
  the torch / scikit-learn clients (extra "flower")

The adapters import the core (``fomo_core``) and never the simulator (``fomo_core.simulate``),
which sits above them.
"""
