"""Framework adapters, installed as ``fomo_core.adapters`` and imported one by one so that only
the frameworks you use get loaded:

- ``fomo_core.adapters.torch``: flatten_module, CandidateBank, FedFomoClient, evaluate_module
- ``fomo_core.adapters.numpy``: layer lists <-> flat buffers, scikit-learn MLPClassifier clients
- ``fomo_core.adapters.flower``: a FedFomo strategy for Flower's Message API and ClientApps around
  the torch / scikit-learn clients (extra "flower")
- ``fomo_core.adapters.simulate_torch``, ``.simulate_sklearn``: the simulator's model backends
  (``fomo-core demo --backend``), found by name by ``fomo_core.simulate``
"""
