"""Models: the embedded tiny pipeline, loaders for base and personalized models, trainers."""

from cemaps.models.tiny import TINY_MODEL_ID, clip_tokenizer, tiny_pipeline

__all__ = ["TINY_MODEL_ID", "clip_tokenizer", "tiny_pipeline", "load_pipeline", "PersonalizedSpec", "applied",
           "BaseWeights", "personalize", "TrainSettings", "TrainResult"]

_LAZY = {
    "load_pipeline": "cemaps.models.loading", "PersonalizedSpec": "cemaps.models.personalized",
    "applied": "cemaps.models.personalized", "BaseWeights": "cemaps.models.personalized",
    "personalize": "cemaps.models.train", "TrainSettings": "cemaps.models.train", "TrainResult": "cemaps.models.train",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.models' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
