"""``cemaps demo``: the whole pipeline on the trained toy world (or the tiny model), in minutes on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cemaps.cli.app import one_line_errors, quiet_option

# benchmarks/demo_threads.py on the project's 2-core machine under other jobs' load (docs/front-door.md, "The
# demo's time and threads"): one thread trained 5-50x faster per step than two; two never won a measurement.
# The cores are used by processes instead (--workers, one per core).
DEFAULT_THREADS = 1
THREADS_HELP = (
    f"torch threads in each process (default: OMP_NUM_THREADS when set, else {DEFAULT_THREADS}, "
    "measured fastest on a shared 2-core machine; docs/front-door.md)."
)
WORKERS_HELP = (
    "processes that train the models side by side and then capture the study in ranks "
    "(default: the CPU cores this process may use; 1 runs everything in one process)."
)


def demo_threads(requested: int | None, environ: dict[str, str] | None = None) -> int:
    """The demo's torch thread count: ``--threads``, else ``OMP_NUM_THREADS``, else :data:`DEFAULT_THREADS`.

    Raises:
        ConfigError: ``--threads`` below 1, or an ``OMP_NUM_THREADS`` that is not an integer >= 1.
    """
    from cemaps.errors import ConfigError

    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads {requested}: expected an integer >= 1")
        return requested
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"OMP_NUM_THREADS={value!r}: expected an integer >= 1 (or unset it, or pass --threads)")
    return int(value)


def demo_workers(requested: int | None) -> int:
    """The demo's processes: ``--workers``, else the CPU cores this process may use.

    Raises:
        ConfigError: ``--workers`` below 1.
    """
    from cemaps.demo_workers import default_workers
    from cemaps.errors import ConfigError

    if requested is None:
        return default_workers()
    if requested < 1:
        raise ConfigError(f"--workers {requested}: expected an integer >= 1")
    return requested


@one_line_errors
def demo_command(
    out: Path = typer.Option(
        Path("demo-out"),
        "--out",
        "-o",
        help="Folder for models, store, results and report: new, "
        "empty, or an earlier demo's (it resumes there); any other folder is refused.",
    ),
    quiet: bool = quiet_option(),
    world: str = typer.Option("toy", "--world", help="toy: the trained toy world; tiny: the random-weight tiny model."),
    threads: int | None = typer.Option(None, "--threads", help=THREADS_HELP, show_default=False),
    workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP, show_default=False),
) -> None:
    """Train LoRA, Textual Inversion and DreamBooth on toy subjects, capture, analyse, report.

    By default on the trained toy world (--world tiny: the random-weight tiny model); its
    numbers are about that small model, not evidence about Stable Diffusion v1.5.
    """
    from cemaps.cli.app import console, quiet_libraries, say
    from cemaps.outputs import check_output_folder

    count = demo_threads(threads)  # before anything is written
    processes = demo_workers(workers)
    check_output_folder(out, "demo", whole_folder=True)  # before anything is trained
    quiet_libraries()
    from cemaps.demo import run_demo

    result = run_demo(out, progress=not quiet, console=console, world=world, threads=count, workers=processes)
    if not quiet:
        process_word, thread_word = (
            ("process" if processes == 1 else "processes"),
            ("thread" if count == 1 else "threads"),
        )
        say("[dim]time ({} {} x {} {}): {}[/]", processes, process_word, count, thread_word, result.timing_line())
    say("[green]done[/] in {} s: store {}, results {}", f"{result.seconds:.0f}", result.store, result.results)
    typer.echo(str(result.report))
