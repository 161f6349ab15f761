"""Local training, the same for every method of a simulated federation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["TrainSettings"]


@dataclass(frozen=True)
class TrainSettings:
    """Local training, the same for every method: ``epochs`` of minibatch SGD per round with
    ``lr``, ``momentum`` and ``batch_size``; ``hidden``: the MLP's hidden layer sizes."""

    epochs: int = 2
    lr: float = 0.05
    momentum: float = 0.5
    batch_size: int = 16
    hidden: tuple = (64,)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d
