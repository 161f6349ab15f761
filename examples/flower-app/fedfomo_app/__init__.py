"""fedfomo_app: FedFomo personalised federated learning as a Flower App."""
