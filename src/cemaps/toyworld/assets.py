"""Where the toy world's trained weights live inside the installed package.

``weights/pipeline`` is a diffusers StableDiffusionPipeline folder (safetensors) and
``weights/clip`` an open_clip model config (``cemaps-toyclip.json``) with its weights
(``open_clip_model.safetensors``); each folder also holds its training settings and
command (``training_*.json``), loss log (``train_log.csv``) and loss curve.
"""

from __future__ import annotations

from pathlib import Path

from cemaps.errors import ModelLoadError

TOYWORLD_MODEL_ID = "cemaps/toyworld"
TOYWORLD_ALIASES = frozenset({TOYWORLD_MODEL_ID, "toyworld"})
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLIP_DIR = WEIGHTS_DIR / "clip"
TOY_CLIP_NAME = "cemaps-toyclip"
TOY_CLIP_WEIGHTS = "open_clip_model.safetensors"


def _missing(what: Path) -> ModelLoadError:
    return ModelLoadError(
        f"the toy world's {what.name!r} is missing from the installed package ({str(what)!r}); reinstall cemaps "
        "or retrain it with `cemaps toyworld train pipeline --out DIR` and pass DIR as the base"
    )


def shipped_pipeline_folder() -> Path:
    """The shipped diffusers folder of the toy-world pipeline.

    Raises:
        ModelLoadError: the package was installed without its weights.
    """
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise _missing(PIPELINE_DIR / "model_index.json")
    return PIPELINE_DIR


def shipped_clip_files() -> tuple[Path, Path]:
    """(open_clip model config .json, weights .safetensors) of the shipped toy CLIP.

    Raises:
        ModelLoadError: the package was installed without them.
    """
    config, weights = CLIP_DIR / f"{TOY_CLIP_NAME}.json", CLIP_DIR / TOY_CLIP_WEIGHTS
    for path in (config, weights):
        if not path.is_file():
            raise _missing(path)
    return config, weights
