"""Does a personalization of the toy world learn its subject? Share of images the pixel judge says show it.

Trains each requested method on a toy subject's renderer-made images with cemaps' own trainers,
generates ``--images`` images for each of three prompts that use the subject ("a sks face", "a sks
face on the left", "a sks face left of a red circle"; Textual Inversion: its token in place of
"a sks face"), and prints, per run, the share where ``cemaps.toyworld.subject_check`` finds the
subject, per prompt and overall, with the training time. The README's sweep table ("The toy
world") was measured with these prompts, 8 images each, 20 steps, guidance 5.

Usage:
    python benchmarks/toyworld_personalization.py --subject toyface \\
        --run "dreambooth steps=150 learning_rate=5e-4 batch_size=8" \\
        --run "lora steps=600 learning_rate=3e-3 batch_size=4 rank=8 lora_targets=attention" \\
        --run "textual_inversion steps=400 learning_rate=0.05 batch_size=4 num_vectors=4"
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cemaps
from cemaps.models.personalized import applied
from cemaps.models.personalized.spec import PersonalizedSpec
from cemaps.models.train import TrainSettings, personalize
from cemaps.toyworld import register
from cemaps.toyworld.subject_check import shows_subject
from cemaps.toyworld.suite import TOY_SUBJECTS

CONTEXTS = ("{}", "{} on the left", "{} left of a red circle")
_TYPES = {"steps": int, "batch_size": int, "rank": int, "num_vectors": int, "learning_rate": float}


def parse_run(text: str) -> TrainSettings:
    """``"lora steps=600 learning_rate=3e-3 rank=8"`` -> TrainSettings (the method first, then fields)."""
    method, *fields = text.split()
    values = {}
    for field in fields:
        name, _, value = field.partition("=")
        values[name] = _TYPES.get(name, str)(value)
    template = "{token}" if method == "textual_inversion" else "a {token} {class_word}"
    return TrainSettings(method=method, instance_template=template, **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="cemaps/toyworld")
    parser.add_argument("--subject", default="toyface", choices=[s.subject_id for s in TOY_SUBJECTS])
    parser.add_argument("--run", action="append", required=True, help="method and TrainSettings fields")
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    args = parser.parse_args()
    register()  # the alias "cemaps/toyworld"
    pipe = cemaps.load_pipeline(args.base, device="cpu")
    subject = next(s for s in TOY_SUBJECTS if s.subject_id == args.subject)
    images = subject.images(4, seed=0)
    print(f"base {args.base}, subject {subject.subject_id}: {args.images} images per prompt, {args.steps} steps")
    for run in args.run:
        settings = parse_run(run)
        method = settings.method
        token = subject.token if method == "textual_inversion" else "sks"
        phrase = token if method == "textual_inversion" else f"a sks {subject.class_word}"
        out = Path(tempfile.mkdtemp()) / "model"
        started = time.perf_counter()
        personalize(pipe, method, images, token, subject.class_word, out, settings, progress=False)
        seconds = time.perf_counter() - started
        spec = PersonalizedSpec("m", method, str(out), token=token if method == "textual_inversion" else None)
        shares = {}
        with applied(pipe, spec):
            for context in CONTEXTS:
                generator = torch.Generator().manual_seed(0)
                prompt = context.format(phrase)
                generated = pipe(
                    [prompt] * args.images,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    generator=generator,
                    output_type="np",
                ).images
                pixels = (generated * 255).round().astype(np.uint8)
                shares[prompt] = float(np.mean([shows_subject(subject.subject_id, image) for image in pixels]))
        per_prompt = ", ".join(f"{prompt!r} {share:.2f}" for prompt, share in shares.items())
        print(f"{run} ({seconds:.0f} s training): {np.mean(list(shares.values())):.2f} [{per_prompt}]")


if __name__ == "__main__":
    main()
