"""Score models: the interface, analytic ground-truth models and network adapters."""
from dpfast.models.analytic import GaussianScore, GMMScore
from dpfast.models.base import ScoreModel

__all__ = ["GMMScore", "GaussianScore", "ScoreModel"]
