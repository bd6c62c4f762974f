"""dpfast: fast diffusion posterior sampling with a distortion–perception knob λ."""
from dpfast import models, operators
from dpfast.models.loading import load_model
from dpfast.operators import measure
from dpfast.sampler import Sampler, restore
from dpfast.schedule import Schedule
from dpfast.stream import Stream

__version__ = "0.1.0"
__all__ = ["Sampler", "Schedule", "load_model", "measure", "models", "operators", "restore", "Stream"]
