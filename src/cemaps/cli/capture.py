"""``cemaps capture``: generate and capture a study into an HDF5 store."""

from __future__ import annotations

from pathlib import Path

import typer

from cemaps.cli.app import console


def capture_command(
    config: Path = typer.Option(None, "--config", "-c", help="study.yaml: base, prompts, seeds, generation, capture, personalized models."),
    store: Path = typer.Option(None, "--store", "-o", help="Store to create or resume (default: the config's `store`, else study.h5)."),
    base: str = typer.Option(None, help="Override the base model: a diffusers folder, a cached hub id, a .safetensors file, or cemaps/tiny-sd."),
    prompts: str = typer.Option(None, help="Override prompts: suite200, demo24, or a CSV/YAML file."),
    seeds: str = typer.Option(None, help="Override seeds, comma-separated, e.g. 0,1,2,3."),
    steps: int = typer.Option(None, help="Override generation.steps."),
    device: str = typer.Option(None, help="cuda, cuda:1, cpu (default: CUDA when available)."),
    records_per_part: int = typer.Option(16, min=1, help="Records per part file: a crash loses at most this many."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Generate every (model, prompt, seed) of a study and capture cross-attention maps into a store.

    Resumes when the store exists: records already in it are skipped. Under
    `accelerate launch -m cemaps capture ...` each process writes its own part files.
    """
    import dataclasses
    from cemaps.cli.app import quiet_libraries

    quiet_libraries()

    from cemaps.config import StudyConfig, load_config
    from cemaps.errors import ConfigError
    from cemaps.study import run_study

    study = load_config(config) if config is not None else StudyConfig()
    if seeds is not None:
        try:
            parsed = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
        study = study.with_overrides(seeds=parsed)
        study = dataclasses.replace(study)  # re-validate
    if steps is not None:
        study = dataclasses.replace(study, generation=dataclasses.replace(study.generation, steps=steps))
    study = study.with_overrides(base=base, prompts=prompts, device=device)
    target = store or Path(study.store or "study.h5")
    result = run_study(study, target, progress=not no_progress, records_per_part=records_per_part)
    console.print(f"[green]store[/] {result.store}: {result.written} records written, {result.skipped} already there "
                  f"({result.total} in this process's share)")
    if result.in_context is not None:
        console.print(f"[green]store[/] {result.in_context.store} (subjects in context): {result.in_context.written} "
                      f"records written, {result.in_context.skipped} already there")
