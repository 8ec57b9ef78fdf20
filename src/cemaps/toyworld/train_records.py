"""What the toy-world trainers leave beside their weights, and what they show while they run.

- ``train_log.csv`` (phase, step, seconds, loss) and ``loss_curve.png``;
- ``training_<what>.json``: the settings, the command line and the torch version;
- a rich progress bar per phase on stderr (steps, or minutes of a time budget) with the
  running loss.

Learning-rate factors live here too: linear warmup and a cosine decay over a time budget.

Example:
    >>> [round(cosine_factor(f, 0.1), 3) for f in (0.0, 0.5, 1.0)]
    [1.0, 0.55, 0.1]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def lr_factor(step: int, warmup: int) -> float:
    """Linear warmup: ``(step + 1) / warmup``, capped at 1."""
    return min(1.0, (step + 1) / warmup)


def cosine_factor(elapsed_fraction: float, final: float) -> float:
    """Cosine decay from 1 to ``final`` as a budget is spent (SGDR's schedule [Loshchilov & Hutter 2017], by time)."""
    progress = min(1.0, max(0.0, elapsed_fraction))
    return final + (1.0 - final) * 0.5 * (1.0 + float(np.cos(np.pi * progress)))


LOG_EVERY = 25  # steps per logged mean loss


class TrainingLog:
    """Appends ``phase,step,seconds,loss`` rows to a CSV and shows progress.

    Args:
        path: the CSV (rewritten with its header).
        progress: a rich bar per phase on stderr; False shows nothing (the CSV is still written).
    """

    def __init__(self, path: Path, progress: bool = False) -> None:
        self.path = path
        self.path.write_text("phase,step,seconds,loss\n")
        self.started = time.perf_counter()
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not progress,
        )
        self._progress = progress
        self._task: TaskID | None = None
        self._key = ""
        self._running: list[float] = []
        self._by_time = False
        self._phase_started = self.started
        if progress:
            self._bar.start()

    def phase(self, key: str, name: str, *, steps: int | None = None, minutes: float | None = None) -> None:
        """Starts phase ``key`` (its name in the CSV) with a bar ``name`` over ``steps`` steps or ``minutes``."""
        self._key, self._running = key, []
        self._by_time = steps is None
        self._phase_started = time.perf_counter()
        total = 60.0 * minutes if self._by_time and minutes else steps
        self._task = self._bar.add_task(name, total=total, step=0, loss="-")

    def step_done(self, step: int, loss: float) -> None:
        """Records one step's loss: moves the bar, and every ``LOG_EVERY`` steps logs the mean loss."""
        self._running.append(loss)
        if self._task is not None:
            done = time.perf_counter() - self._phase_started if self._by_time else step
            self._bar.update(self._task, completed=done, step=step)
        if step % LOG_EVERY == 0:
            self.end_phase(step)

    def end_phase(self, step: int) -> None:
        """Logs the mean loss of the steps not logged yet (a short run still leaves its loss)."""
        if self._running:
            self(self._key, step, float(np.mean(self._running)))
            self._running = []

    def __call__(self, phase: str, step: int, loss: float) -> None:
        elapsed = time.perf_counter() - self.started
        with self.path.open("a") as handle:
            handle.write(f"{phase},{step},{elapsed:.1f},{loss:.5f}\n")
        if self._progress and self._task is not None:
            self._bar.update(self._task, loss=f"{loss:.4f}")

    def close(self) -> None:
        self._bar.stop()


class NoLog:
    """The log of a process that writes nothing (ranks other than 0)."""

    def phase(self, key: str, name: str, *, steps: int | None = None, minutes: float | None = None) -> None:
        pass

    def step_done(self, step: int, loss: float) -> None:
        pass

    def end_phase(self, step: int) -> None:
        pass

    def __call__(self, phase: str, step: int, loss: float) -> None:
        pass

    def close(self) -> None:
        pass


def command_line() -> str:
    """The command this process runs, as a user would type it (``cemaps toyworld train ...``)."""
    import shlex

    name = Path(sys.argv[0]).name
    program = {"__main__.py": "python -m cemaps"}.get(name, name)
    return " ".join([program, shlex.join(sys.argv[1:])]).strip()


def write_settings(out: Path, what: str, settings: dict) -> None:
    """Writes ``training_<what>.json``: the settings, the command that ran and the torch version."""
    record = {
        "what": what,
        "settings": settings,
        "command": command_line(),
        "torch": torch.__version__,
    }
    (out / f"training_{what}.json").write_text(json.dumps(record, indent=2) + "\n")


def plot_loss_curve(log_csv: Path, png: Path) -> None:
    """Loss against step, one panel per phase, from ``train_log.csv``."""
    import pandas as pd

    from cemaps.report.style import new_figure

    table = pd.read_csv(log_csv)
    phases = [p for p in table["phase"].unique() if p != "data"]
    if not phases:
        return
    figure = new_figure(4 * len(phases), 3)
    for index, phase in enumerate(phases, start=1):
        axis = figure.add_subplot(1, len(phases), index)
        rows = table[table["phase"] == phase]
        axis.plot(rows["step"], rows["loss"])
        axis.set_yscale("log")
        axis.set_title(phase)
        axis.set_xlabel("step")
    figure.savefig(png, dpi=80)
