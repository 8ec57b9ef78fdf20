"""Lockstep timing: two identical pipelines generate in two threads that take turns at every denoiser call.

One side generates plainly, the other under ``cemaps.capture``, so both see the same clocks,
caches and thermal state; each side's time is the sum of its own turns. A forward pre-hook on
the denoiser hands the turn over; it is registered before capture's own hooks, so capture's
per-call work lands in the capturing side's turn. On CUDA every turn starts after
``torch.cuda.synchronize()`` and is timed by CUDA events, the second one synchronised before the
turn is handed over, so no queued kernel of one side runs in the other's turn; elsewhere turns
are timed with ``time.perf_counter``.

Used by ``capture_overhead.py`` (CPU, UNet families), ``capture_overhead_dit.py`` (CPU, SD3/Flux)
and ``gpu_timing.py`` (GPU sessions). Imported as ``lockstep`` (benchmarks/ is on sys.path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from cemaps import CrossAttentionProbe, capture
from cemaps.models.families import family_of


class StepClock:
    """Times one turn: CUDA events around it on CUDA (synchronised at both ends), else ``perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> float:
        """Seconds since :meth:`start`, after the turn's queued work has finished."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self._start.elapsed_time(end) / 1000.0
        return time.perf_counter() - self._start


class Turns:
    """Two threads that take turns: whoever holds the turn runs, the other waits."""

    def __init__(self, first: int) -> None:
        self._cond = threading.Condition()
        self._turn = first
        self._done = [False, False]

    def wait(self, side: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._turn == side or self._done[1 - side], timeout=3600):
                raise TimeoutError("the other side of the lockstep pair stopped answering")

    def hand_over(self, side: int, done: bool = False) -> None:
        with self._cond:
            self._done[side] = self._done[side] or done
            self._turn = 1 - side
            self._cond.notify_all()


def lockstep_pair(
    pipes: tuple[Any, Any],
    generate: Callable[[Any], Any],
    probe_kwargs: dict,
    capture_index: int,
    first: int,
    *,
    device: torch.device | None = None,
    denoiser: str | None = None,
    threads: int | None = None,
) -> dict:
    """One image batch per side, in turns at every denoiser call.

    Args:
        pipes: two identical pipelines (their own modules).
        generate: makes one image batch with a pipeline.
        probe_kwargs: ``CrossAttentionProbe`` arguments of the capturing side.
        capture_index: which of ``pipes`` captures.
        first: which side takes the first turn.
        device: where the pipelines run (CUDA: event timing); default CPU.
        denoiser: the pipeline attribute to hook; default the family's denoiser.
        threads: ``torch.set_num_threads`` in each side's thread (OpenMP settings do not carry
            over to new threads); default unchanged.

    Returns:
        ``plain_s`` / ``capture_s``: each side's seconds; ``plain_turns`` / ``capture_turns``: its
        turns' seconds (one per denoiser call, the first holding the text encoding, the last the decode).
    """
    turns = Turns(first)
    device = device or torch.device("cpu")
    clocks = [StepClock(device), StepClock(device)]
    spent: list[list[float]] = [[], []]
    errors: list[BaseException] = []

    def side(index: int) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        pipe = pipes[index]
        module = getattr(pipe, denoiser) if denoiser else family_of(pipe).denoiser_of(pipe)

        def take_turns(module, args, kwargs):
            spent[index].append(clocks[index].stop())
            turns.hand_over(index)
            turns.wait(index)
            clocks[index].start()

        handle = module.register_forward_pre_hook(take_turns, with_kwargs=True)
        try:
            turns.wait(index)
            clocks[index].start()
            if index == capture_index:
                with capture(pipe, [CrossAttentionProbe(**probe_kwargs)]) as run:
                    generate(pipe)
                run.records()  # collecting to numpy is part of the cost
            else:
                generate(pipe)
            spent[index].append(clocks[index].stop())
        except BaseException as err:  # noqa: BLE001 - re-raised by the caller's thread
            errors.append(err)
        finally:
            handle.remove()
            turns.hand_over(index, done=True)

    workers = [threading.Thread(target=side, args=(i,)) for i in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    plain, captured = spent[1 - capture_index], spent[capture_index]
    return {"plain_s": sum(plain), "capture_s": sum(captured), "plain_turns": plain, "capture_turns": captured}
