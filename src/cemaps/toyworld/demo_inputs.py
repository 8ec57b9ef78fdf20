"""What ``cemaps demo --world toy`` needs from the toy world: base, prompts, subjects, images.

The demo keeps its flow (train, capture, analyse, report); only its inputs change: the
shipped toy-world pipeline as base, the toy suite's balanced 24-prompt subset, and the
three toy subjects (a face, an object, a style) with training images from the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cemaps.toyworld.suite import TOY_SUBJECTS, toy_prompts, toy_subjects
from cemaps.toyworld.world import IMAGE_SIZE


@dataclass(frozen=True)
class DemoInputs:
    """Files written into the demo folder and the subjects to personalize.

    Attributes:
        prompts: CSV of the toy suite's 24 ``in_demo24`` prompts.
        subjects: CSV of the toy subjects (for the analysis' subject labels).
        subject_images: subject_id -> PIL training images.
        size: image side in pixels.
    """

    prompts: Path
    subjects: Path
    subject_images: dict
    size: int = IMAGE_SIZE


def write_demo_inputs(out: str | Path, n_images: int = 4) -> DemoInputs:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = toy_prompts()
    prompts_path = out / "toy_prompts_demo24.csv"
    prompts[prompts["in_demo24"]].drop(columns=["in_demo24"]).to_csv(prompts_path, index=False)
    subjects_path = out / "toy_subjects.csv"
    toy_subjects().to_csv(subjects_path, index=False)
    images = {subject.subject_id: subject.images(n_images, seed=0) for subject in TOY_SUBJECTS}
    return DemoInputs(prompts_path, subjects_path, images)
