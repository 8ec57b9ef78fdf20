"""What the up-front model checks cost, beside what applying the same model costs, in one run.

``cemaps.models.personalized.check(pipe, spec)`` reads and checks a model without changing
the pipeline (the study calls it for every model before generating anything); LoRA
application also verifies every wrapped module against ``scale*alpha/r*B@A`` after
diffusers loads it. This script times, per method, on the same pipeline and files:

- ``check``: one ``check(pipe, spec)``;
- ``apply round``: one ``with applied(pipe, spec)`` (load + verify + remove);
- for LoRA, ``verify``: the post-load verification alone (inside the round).

It prints each as seconds and as a ratio to the apply round. SD geometry: the random
SD v1.5-sized UNet and CLIP text encoder of ``model_switch.py``, a kohya LoRA of rank 16 on
every UNet attention projection and every text-encoder attention/MLP layer, and the
DreamBooth UNet folder of ``model_switch.py`` (float16 on disk).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/model_checks.py --geometry tiny
    OMP_NUM_THREADS=1 python benchmarks/model_checks.py --geometry sd --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from model_switch import sd_geometry_pipeline, write_artifacts  # noqa: E402

from cemaps.models import tiny_pipeline  # noqa: E402
from cemaps.models.personalized import PersonalizedSpec, applied, check  # noqa: E402
from cemaps.models.personalized import lora as lora_module  # noqa: E402


def kohya_lora(pipe, path: Path, rank: int) -> PersonalizedSpec:
    """rank-r kohya LoRA on every UNet attention projection and every text-encoder Linear in attention and MLP."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for component, prefix, keep in (
        ("unet", "lora_unet_", (".to_q", ".to_k", ".to_v", ".to_out.0")),
        ("text_encoder", "lora_te_text_model_", ("_proj", ".fc1", ".fc2")),
    ):
        for name, module in getattr(pipe, component).named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(keep) and "embeddings" not in name:
                flat = prefix + name.replace(".", "_")
                state[f"{flat}.lora_down.weight"] = (
                    torch.randn(rank, module.in_features, generator=generator) * 0.01
                ).half()
                state[f"{flat}.lora_up.weight"] = (
                    torch.randn(module.out_features, rank, generator=generator) * 0.01
                ).half()
                state[f"{flat}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(state, path)
    return PersonalizedSpec("kohya", "lora", str(path))


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", choices=["tiny", "sd"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    pipe = (
        tiny_pipeline(seed=0) if args.geometry == "tiny" else sd_geometry_pipeline(torch.device("cpu"), torch.float32)
    )
    verify_times: list[float] = []
    original_verify = lora_module._verify_loaded

    def timed_verify(*a, **k):
        start = time.perf_counter()
        try:
            return original_verify(*a, **k)
        finally:
            verify_times.append(time.perf_counter() - start)

    lora_module._verify_loaded = timed_verify
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        specs = [kohya_lora(pipe, folder / "kohya.safetensors", args.rank), *write_artifacts(pipe, folder)[1:]]
        print(f"geometry={args.geometry} repeats={args.repeats} (median seconds; ratio = x / apply round)")
        print(f"{'method':<20}{'check':>10}{'apply round':>14}{'verify':>10}{'check/round':>13}{'verify/round':>14}")
        for spec in specs:
            check(pipe, spec)  # warm the file cache: both timings then read from memory
            checked = median_seconds(lambda spec=spec: check(pipe, spec), args.repeats)
            verify_times.clear()

            def round_trip(spec=spec) -> None:
                with applied(pipe, spec):
                    pass

            applied_seconds = median_seconds(round_trip, args.repeats)
            verify = statistics.median(verify_times) if verify_times else float("nan")
            print(
                f"{spec.method:<20}{checked:>10.3f}{applied_seconds:>14.3f}{verify:>10.3f}"
                f"{checked / applied_seconds:>13.2f}{verify / applied_seconds:>14.2f}"
            )


if __name__ == "__main__":
    main()
