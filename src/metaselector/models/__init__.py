"""Base CTR models: LR, FM, FFM, DeepFM, and the registry that lets users add their own."""

from .base import BaseModel, Batch, ModelSettings, build_model, register_model, resolve_model
from .deepfm import DeepFM
from .din import DIN
from .ffm import FFM
from .fm import FM
from .lr import LR
from .mf import MF, RatingMF

__all__ = ["BaseModel", "Batch", "ModelSettings", "build_model", "register_model", "resolve_model",
           "LR", "FM", "FFM", "DeepFM", "MF", "RatingMF", "DIN"]
