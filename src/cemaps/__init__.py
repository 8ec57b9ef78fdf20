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

Names are imported on first use, so ``import cemaps.store`` or the CLI's ``--help``
do not pay for importing torch and diffusers; the ``TYPE_CHECKING`` block below declares
them for editors and type checkers.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from cemaps.errors import CemapsError, ConfigError, LayerNotFoundError, ModelLoadError, StoreError
from cemaps.version import __version__ as __version__

_LAZY = {
    "capture": "cemaps.hooks",
    "select_modules": "cemaps.hooks",
    "LabelledArray": "cemaps.labelled",
    "CrossAttentionProbe": "cemaps.probes",
    "Probe": "cemaps.probes",
    "tiny_pipeline": "cemaps.models",
    "load_pipeline": "cemaps.models.loading",
    "open_store": "cemaps.store",
    "StudyConfig": "cemaps.study",
    "load_config": "cemaps.study",
    "run_study": "cemaps.study",
    "run_analysis": "cemaps.analysis.pipeline",
    "write_report": "cemaps.report",
}
_SUBMODULES = ("analysis", "models", "probes", "hooks", "store", "report", "data")

__all__ = [
    "CemapsError",
    "ConfigError",
    "LayerNotFoundError",
    "ModelLoadError",
    "StoreError",
    "capture",
    "select_modules",
    "LabelledArray",
    "CrossAttentionProbe",
    "Probe",
    "tiny_pipeline",
    "load_pipeline",
    "open_store",
    "StudyConfig",
    "load_config",
    "run_study",
    "run_analysis",
    "write_report",
    "analysis",
    "models",
    "probes",
    "hooks",
    "store",
    "report",
    "data",
]

if TYPE_CHECKING:
    from cemaps import analysis, data, hooks, models, probes, report, store
    from cemaps.analysis.pipeline import run_analysis
    from cemaps.hooks import capture, select_modules
    from cemaps.labelled import LabelledArray
    from cemaps.models import tiny_pipeline
    from cemaps.models.loading import load_pipeline
    from cemaps.probes import CrossAttentionProbe, Probe
    from cemaps.report import write_report
    from cemaps.store import open_store
    from cemaps.study import StudyConfig, load_config, run_study


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = import_module(f"cemaps.{name}")
    else:
        raise AttributeError(f"module 'cemaps' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
