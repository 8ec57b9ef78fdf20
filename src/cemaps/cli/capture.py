"""``cemaps capture``: generate and capture a study into an HDF5 store."""

from __future__ import annotations

from pathlib import Path

import typer

from cemaps.cli.app import one_line_errors, quiet_option, say
from cemaps.models.aliases import TINY_MODEL_ID


@one_line_errors
def capture_command(
    config: Path = typer.Option(
        None,
        "--config",
        "-c",
        help="study.yaml: base, prompts, seeds, generation, capture, personalized models (required).",
    ),
    store: Path = typer.Option(
        None,
        "--store",
        "-o",
        help="Store to create or resume (default: the config's `store`, "
        "relative to the config's folder, else study.h5 here).",
    ),
    base: str = typer.Option(
        None,
        help=f"Override the base model: a diffusers folder, a cached hub id, a .safetensors file, or {TINY_MODEL_ID}.",
    ),
    prompts: str = typer.Option(
        None, help="Override prompts: suite200, demo24, toyworld72, toyworld-demo24, or a CSV/YAML file."
    ),
    seeds: str = typer.Option(None, help="Override seeds, comma-separated, e.g. 0,1,2,3."),
    steps: int = typer.Option(None, help="Override generation.steps."),
    device: str = typer.Option(None, help="cuda, cuda:1, cpu (default: CUDA when available)."),
    records_per_part: int = typer.Option(16, min=1, help="Records per part file: a crash loses at most this many."),
    set_aside_damaged: bool = typer.Option(
        False,
        "--set-aside-damaged",
        help="Verify every part file first and move damaged ones to <store>.damaged/, then remake their records.",
    ),
    quiet: bool = quiet_option(),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the plan (records to make and done, model switches, disk, time from a short calibration) and write nothing.",
    ),
    processes: int = typer.Option(
        None,
        min=1,
        help="With --dry-run: plan for this many capture processes (default: the launcher's WORLD_SIZE, else 1).",
    ),
    probe: list[str] = typer.Option(
        [],
        "--probe",
        help="A user probe, package.module:Class (repeatable), captured beside the cross-attention maps "
        "and stored under <name>/<array>; e.g. cemaps.probes.examples:OutputNormProbe.",
        show_default=False,
    ),
) -> None:
    """Generate every (model, prompt, seed) of a study and capture cross-attention maps into a store.

    Resumes when the store exists: records already in it are skipped. Under
    `accelerate launch -m cemaps capture ...` each process writes its own part files.
    """
    import dataclasses

    from cemaps.cli.app import quiet_libraries
    from cemaps.errors import ConfigError

    if config is None:
        raise ConfigError(
            "capture needs --config study.yaml (the study to run; see docs/study.md); "
            "for a ready-made small study run `cemaps demo`"
        )
    quiet_libraries()

    from cemaps.study.config import load_config
    from cemaps.study.config_checks import check_base_model, check_device
    from cemaps.study.runner import run_study

    study = load_config(config)
    from cemaps.probes.loading import load_probes

    probes = load_probes(probe)  # before any model is loaded
    if seeds is not None:
        try:
            parsed = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
        if not parsed or min(parsed) < 0:
            raise ConfigError(f"--seeds {seeds!r}: expected comma-separated non-negative integers, e.g. 0,1,2")
        from cemaps.study.value_checks import check_seeds

        check_seeds(parsed, "--seeds")
        study = study.with_overrides(seeds=parsed)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps {steps}: expected an integer >= 1")
        study = dataclasses.replace(study, generation=dataclasses.replace(study.generation, steps=steps))
    if device is not None:
        check_device(device, "--device")
    study = study.with_overrides(base=base, prompts=prompts, device=device)
    check_base_model(study.base, "--base" if base is not None else f"{config}: base")
    target = store or Path(study.store or "study.h5")
    if dry_run:
        from cemaps.study.distributed import process_info
        from cemaps.study.plan import plan_study

        plan = plan_study(study, target, processes=processes, records_per_part=records_per_part)
        if process_info().rank == 0:  # under a launcher every process plans; one prints
            typer.echo(plan.to_text())
            from cemaps.analysis.stats.power import power_text

            typer.echo(power_text(study))
        return
    from cemaps.outputs import check_writable

    check_writable(target, "--store" if store is not None else f"{config}: store")  # before the model is loaded
    result = run_study(
        study,
        target,
        progress=not quiet,
        records_per_part=records_per_part,
        probes=probes,
        set_aside_damaged=set_aside_damaged,
    )
    say(
        "[green]store[/] {}: {} records written, {} already there ({} in this process's share)",
        result.store,
        result.written,
        result.skipped,
        result.total,
    )
    if result.in_context is not None:
        say(
            "[green]store[/] {} (subjects in context): {} records written, {} already there",
            result.in_context.store,
            result.in_context.written,
            result.in_context.skipped,
        )
