"""Score models: the interface, analytic ground-truth models and network adapters."""
from dpfast.models.adm import ADM_PRESETS, ADMConfig, ADMScoreModel, load_adm_checkpoint
from dpfast.models.analytic import GaussianScore, GMMScore
from dpfast.models.base import ScoreModel
from dpfast.models.loading import load_builtin, load_model

__all__ = [
    "ADMConfig",
    "ADMScoreModel",
    "ADM_PRESETS",
    "GMMScore",
    "GaussianScore",
    "ScoreModel",
    "load_adm_checkpoint",
    "load_builtin",
    "load_model",
]
