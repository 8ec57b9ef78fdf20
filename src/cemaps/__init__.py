"""cemaps: Concept Entanglement Maps for text-to-image diffusion models.

Capture cross-attention maps and weight deltas from a base UNet and from
personalized UNets into HDF5, then measure how personalization disrupts
unrelated prompts and where in the UNet it happens.

Example:
    >>> import cemaps, torch
    >>> pipe = cemaps.tiny_pipeline(seed=0)
    >>> probe = cemaps.CrossAttentionProbe(timesteps=2)
    >>> with cemaps.capture(pipe, [probe]) as run:
    ...     _ = pipe("a lighthouse", num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    >>> len(run[probe])
    16
"""

from cemaps import analysis, models
from cemaps.config import StudyConfig, load_config
from cemaps.errors import CemapsError, ConfigError, LayerNotFoundError, ModelLoadError, StoreError
from cemaps.hooks import capture, select_modules
from cemaps.labelled import LabelledArray
from cemaps.models import tiny_pipeline
from cemaps.models.loading import load_pipeline
from cemaps.probes import CrossAttentionProbe, Probe
from cemaps.store import open_store
from cemaps.study import run_study

__all__ = [
    "CemapsError", "ConfigError", "CrossAttentionProbe", "LabelledArray", "LayerNotFoundError", "ModelLoadError",
    "Probe", "StoreError", "StudyConfig", "analysis", "capture", "load_config", "load_pipeline", "models",
    "open_store", "run_study", "select_modules", "tiny_pipeline",
]
__version__ = "0.1.0"
