"""Models: the embedded tiny pipeline, loaders for base and personalized models, trainers."""

from cemaps.models.tiny import clip_tokenizer, tiny_pipeline

__all__ = ["clip_tokenizer", "tiny_pipeline"]
