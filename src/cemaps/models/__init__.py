"""Models: the embedded tiny pipeline, loaders for base and personalized models, trainers.

Names are imported on first use, so ``cemaps.models.methods`` (read by the study config)
does not import diffusers.
"""

from typing import TYPE_CHECKING

from cemaps.models.methods import METHODS

__all__ = [
    "METHODS",
    "TINY_MODEL_ID",
    "TINY_SDXL_MODEL_ID",
    "clip_tokenizer",
    "tiny_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_sd3_pipeline",
    "tiny_flux_pipeline",
    "tiny_pixart_sigma_pipeline",
    "ModelFamily",
    "family_of",
    "family_of_folder",
    "load_pipeline",
    "PersonalizedSpec",
    "applied",
    "check",
    "BaseWeights",
    "personalize",
    "TrainSettings",
    "TrainResult",
]

_LAZY = {
    "TINY_MODEL_ID": "cemaps.models.aliases",
    "clip_tokenizer": "cemaps.models.tiny",
    "tiny_pipeline": "cemaps.models.tiny",
    "TINY_SDXL_MODEL_ID": "cemaps.models.aliases",
    "tiny_sdxl_pipeline": "cemaps.models.tiny",
    "tiny_sd3_pipeline": "cemaps.models.tiny_dit",
    "tiny_flux_pipeline": "cemaps.models.tiny_dit",
    "tiny_pixart_sigma_pipeline": "cemaps.models.tiny_dit",
    "ModelFamily": "cemaps.models.families",
    "family_of": "cemaps.models.families",
    "family_of_folder": "cemaps.models.families",
    "load_pipeline": "cemaps.models.loading",
    "PersonalizedSpec": "cemaps.models.personalized",
    "applied": "cemaps.models.personalized",
    "check": "cemaps.models.personalized",
    "BaseWeights": "cemaps.models.personalized",
    "personalize": "cemaps.models.train",
    "TrainSettings": "cemaps.models.train",
    "TrainResult": "cemaps.models.train",
}

if TYPE_CHECKING:
    from cemaps.models.aliases import TINY_MODEL_ID, TINY_SDXL_MODEL_ID
    from cemaps.models.families import ModelFamily, family_of, family_of_folder
    from cemaps.models.loading import load_pipeline
    from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied, check
    from cemaps.models.tiny import clip_tokenizer, tiny_pipeline, tiny_sdxl_pipeline
    from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_pixart_sigma_pipeline, tiny_sd3_pipeline
    from cemaps.models.train import TrainResult, TrainSettings, personalize


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.models' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
