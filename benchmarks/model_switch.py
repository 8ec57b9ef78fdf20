"""How much does switching personalized models cost, relative to generating with them?

For each method the switch is one ``with cemaps.models.personalized.applied(pipe, spec)``
round: load + apply on entry, remove + restore on exit (LoRA: load_lora_weights ->
unload_lora_weights; TI: load_textual_inversion -> unload_textual_inversion;
DreamBooth: read the checkpoint, copy it into the UNet in place, copy the base back
from a CPU snapshot taken once per study, whose one-off cost is reported separately).

Generation work:
- tiny: one full image (50 steps, 64x64, classifier-free guidance), timed end to end.
- sd: a randomly initialised UNet of SD v1.5 geometry (``UNet2DConditionModel(
  cross_attention_dim=768, sample_size=64)``, ~859.5M parameters) with an SD-sized
  CLIP text encoder (123M) and the tiny VAE. One image's work is estimated as
  50 x the time of one UNet forward on 64x64 latents with batch 2 (the CFG pair),
  averaged over ``--sd-steps`` forwards after one warm-up. Text encoding and VAE
  decoding are left out, which makes the estimate low and the switching fraction
  pessimistic.

Paper scale: each personalized model generates 200 prompts x 4 seeds = 800 images,
and is switched in once, so the fraction is switch_time / (800 x image_time).

Usage:
    python benchmarks/model_switch.py                  # tiny and SD geometry
    python benchmarks/model_switch.py --geometry tiny  # seconds on a CPU
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from cemaps.models import tiny_pipeline
from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied

PAPER_IMAGES_PER_MODEL = 200 * 4
STEPS_PER_IMAGE = 50
TARGET_FRACTION = 0.05
ATTENTION_PROJECTION = re.compile(r"attn\d\.(to_q|to_k|to_v|to_out\.0)$")


def sd_geometry_pipeline(device: torch.device, dtype: torch.dtype) -> StableDiffusionPipeline:
    """SD v1.5-sized UNet and text encoder with random weights; the tiny VAE, tokenizer and scheduler."""
    tiny = tiny_pipeline(seed=0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tiny.tokenizer.vocab_size,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=tiny.tokenizer.model_max_length,
            bos_token_id=tiny.tokenizer.bos_token_id,
            eos_token_id=tiny.tokenizer.eos_token_id,
            pad_token_id=tiny.tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=text_encoder, tokenizer=tiny.tokenizer, unet=unet, scheduler=tiny.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def write_artifacts(pipe: StableDiffusionPipeline, folder: Path, rank: int = 4) -> list[PersonalizedSpec]:
    """A rank-r LoRA on every attention projection, a 1-vector TI, a perturbed-UNet DreamBooth folder."""
    generator = torch.Generator().manual_seed(0)
    lora: dict[str, torch.Tensor] = {}
    for path, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ATTENTION_PROJECTION.search(path):
            lora[f"unet.{path}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            lora[f"unet.{path}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
    save_file(lora, folder / "pytorch_lora_weights.safetensors")
    width = pipe.text_encoder.get_input_embeddings().embedding_dim
    save_file({"<subject>": torch.randn(width, generator=generator)}, folder / "learned_embeds.safetensors")
    dreambooth = folder / "dreambooth_unet"
    dreambooth.mkdir()
    # a DreamBooth checkpoint as commonly shared: the whole UNet, every tensor changed, stored in float16
    state = {
        k: (v.float() + 1e-3 * torch.randn(v.shape, generator=generator)).half()
        for k, v in pipe.unet.state_dict().items()
    }
    save_file(state, dreambooth / "diffusion_pytorch_model.safetensors")
    del state
    (dreambooth / "config.json").write_text(pipe.unet.to_json_string())
    return [
        PersonalizedSpec("lora", "lora", str(folder / "pytorch_lora_weights.safetensors")),
        PersonalizedSpec("textual_inversion", "textual_inversion", str(folder / "learned_embeds.safetensors")),
        PersonalizedSpec("dreambooth", "dreambooth", str(dreambooth)),
    ]


def timed(function, repeats: int) -> float:
    """Median wall-clock seconds of ``function()`` (synchronising CUDA)."""
    seconds = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def switch_seconds(
    pipe: StableDiffusionPipeline, specs: list[PersonalizedSpec], repeats: int
) -> tuple[dict[str, float], float]:
    """Median seconds of one apply+restore round per method, and the one-off base snapshot time."""
    start = time.perf_counter()
    base = BaseWeights(pipe)
    snapshot_seconds = time.perf_counter() - start

    def round_trip(spec: PersonalizedSpec) -> None:
        with applied(pipe, spec, base=base):
            pass

    for spec in specs:  # warm-up: imports, allocator, file cache
        round_trip(spec)
    print(f"   snapshot {snapshot_seconds:.2f} s; warm-up rounds done", flush=True)
    return {spec.method: timed(lambda spec=spec: round_trip(spec), repeats) for spec in specs}, snapshot_seconds


def tiny_image_seconds(pipe: StableDiffusionPipeline, repeats: int) -> float:
    def generate() -> None:
        pipe(
            "a watercolor of a lighthouse",
            num_inference_steps=STEPS_PER_IMAGE,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )

    generate()
    return timed(generate, repeats)


def sd_image_seconds(pipe: StableDiffusionPipeline, forwards: int) -> float:
    """50 x the mean time of one UNet forward on [2, 4, 64, 64] latents (the CFG pair)."""
    unet = pipe.unet
    latents = torch.randn(2, unet.config.in_channels, 64, 64, device=unet.device, dtype=unet.dtype)
    context = torch.randn(
        2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim, device=unet.device, dtype=unet.dtype
    )
    timestep = torch.tensor(500, device=unet.device)
    with torch.no_grad():
        unet(latents, timestep, encoder_hidden_states=context)
        per_forward = timed(lambda: unet(latents, timestep, encoder_hidden_states=context), forwards)
    return STEPS_PER_IMAGE * per_forward


def report(
    geometry: str, image_seconds: float, switches: dict[str, float], snapshot_seconds: float, n_params: int
) -> None:
    paper_seconds = PAPER_IMAGES_PER_MODEL * image_seconds
    print(f"\n== {geometry}: UNet {n_params / 1e6:.1f}M params; one image ({STEPS_PER_IMAGE} steps) = {image_seconds:.3f} s; "
          f"one model at paper scale ({PAPER_IMAGES_PER_MODEL} images) = {paper_seconds:.0f} s")  # fmt: skip
    print(f"   base snapshot (once per study): {snapshot_seconds:.3f} s")
    print(
        f"   {'method':<18} {'switch s':>9} {'x one image':>12} {'% of paper-scale model':>24}  target < {TARGET_FRACTION:.0%}"
    )
    for method, seconds in switches.items():
        fraction = seconds / paper_seconds
        verdict = "ok" if fraction < TARGET_FRACTION else "OVER"
        print(f"   {method:<18} {seconds:>9.3f} {seconds / image_seconds:>12.2e} {100 * fraction:>23.2e}%  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", choices=["tiny", "sd", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument(
        "--sd-steps", type=int, default=2, help="UNet forwards timed for the SD-geometry image estimate"
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(f"device={device} dtype={dtype} torch={torch.__version__} threads={torch.get_num_threads()}", flush=True)
    if args.geometry in ("tiny", "both"):
        pipe = tiny_pipeline(seed=0).to(device, dtype)
        with tempfile.TemporaryDirectory() as folder:
            specs = write_artifacts(pipe, Path(folder))
            switches, snapshot = switch_seconds(pipe, specs, args.repeats)
        report("tiny", tiny_image_seconds(pipe, args.repeats), switches, snapshot, pipe.unet.num_parameters())
    if args.geometry in ("sd", "both"):
        pipe = sd_geometry_pipeline(device, dtype)
        print(f"   SD-geometry pipeline built: UNet {pipe.unet.num_parameters() / 1e6:.1f}M params", flush=True)
        image = sd_image_seconds(pipe, args.sd_steps)
        print(f"   one image estimated at {image:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            specs = write_artifacts(pipe, Path(folder))
            switches, snapshot = switch_seconds(pipe, specs, args.repeats)
        report("SD v1.5 geometry", image, switches, snapshot, pipe.unet.num_parameters())


if __name__ == "__main__":
    main()
