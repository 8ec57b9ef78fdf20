"""cemaps: Concept Entanglement Maps for text-to-image diffusion models."""

from cemaps.errors import CemapsError

__all__ = ["CemapsError"]
__version__ = "0.1.0"
