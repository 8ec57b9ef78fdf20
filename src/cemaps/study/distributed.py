"""Which share of a study this process captures, read from the launcher's environment.

Launchers start one process per GPU and tell each who it is through environment
variables: ``torchrun`` and ``accelerate launch --multi_gpu`` (which runs torchrun) set
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; MPI launchers (``mpirun``, which
``accelerate``'s multi-CPU mode uses) set ``OMPI_COMM_WORLD_*``, ``PMI_*`` or
``MV2_COMM_WORLD_*``. Capture needs no communication between processes: each one
takes a disjoint contiguous block of the study's batches, writes its own part files
under the writer tag ``rank<RANK>``, and the store's manifest is rebuilt from the union
of every sealed part. So no process group is initialised and no process waits for
another (a barrier would time out while a slower process still has hours to go).

Example:
    >>> info = process_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    >>> info.writer_tag, shard(list(range(5)), info.rank, info.world_size)
    ('rank1', [2, 3, 4])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cemaps.errors import ConfigError

T = TypeVar("T")

# (launcher, rank variable, world-size variable, local-rank variable), tried in this order
_LAUNCHER_VARIABLES = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("mpi", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
)


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place among the capture processes.

    Attributes:
        rank: 0..world_size-1, unique over all machines.
        world_size: number of capture processes over all machines.
        local_rank: index of this process on its machine (selects its GPU).
        launcher: "torchrun", "mpi" or "single" (no launcher variables found).
    """

    rank: int
    world_size: int
    local_rank: int
    launcher: str

    @property
    def writer_tag(self) -> str:
        """The tag of this process's part files: ``rank<rank>``."""
        return f"rank{self.rank}"


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise ConfigError(
                f"environment variable {name} is not set but the launcher set its companions; expected an integer"
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer") from None


def process_info(environ: Mapping[str, str] | None = None) -> ProcessInfo:
    """Rank, world size and local rank from the launcher's environment variables.

    Args:
        environ: the environment (default ``os.environ``).

    Returns:
        ``ProcessInfo(0, 1, 0, "single")`` when no launcher variables are set.

    Raises:
        ConfigError: a variable is not an integer, the world size is below 1, or the rank
            is outside 0..world_size-1.
    """
    environ = os.environ if environ is None else environ
    for launcher, rank_name, world_name, local_name in _LAUNCHER_VARIABLES:
        if world_name not in environ and rank_name not in environ:
            continue
        world = _integer(environ, world_name)
        rank = _integer(environ, rank_name)
        local_rank = _integer(environ, local_name, default=rank)
        if world < 1:
            raise ConfigError(f"environment variable {world_name}={world}: expected a process count >= 1")
        if not 0 <= rank < world:
            raise ConfigError(
                f"environment variable {rank_name}={rank}: expected 0..{world - 1} ({world_name}={world})"
            )
        return ProcessInfo(rank, world, local_rank, launcher)
    return ProcessInfo(0, 1, 0, "single")


def shard_bounds(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of process ``rank``'s contiguous block of ``n_items`` (sizes differ by at most 1)."""
    return n_items * rank // world_size, n_items * (rank + 1) // world_size


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank``'s contiguous block of ``items``; the blocks of all ranks partition ``items``.

    Contiguous blocks of the study's (model-major) batch list keep each process on few
    models, so a process switches models about ``models / world_size`` times instead of
    once per model.
    """
    start, stop = shard_bounds(len(items), rank, world_size)
    return list(items[start:stop])


def capture_device(info: ProcessInfo, requested: str | None) -> str | None:
    """The device this process generates on: its own GPU when several processes share a machine.

    Args:
        info: this process.
        requested: the config's ``device`` (None: CUDA when available, else CPU).

    Returns:
        None (let the loader choose) for one process; ``cuda:<local_rank>`` for several
        processes on CUDA when ``requested`` is None or plain "cuda"; otherwise ``requested``.

    Raises:
        ConfigError: ``local_rank`` is past the visible CUDA devices (more processes than GPUs).
    """
    if info.world_size == 1:
        return requested
    import torch

    if requested not in (None, "cuda") or not torch.cuda.is_available():
        return requested
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise ConfigError(
            f"local rank {info.local_rank}: only {count} CUDA devices are visible; "
            "start at most one capture process per GPU (e.g. torchrun --nproc_per_node "
            f"{count})"
        )
    return f"cuda:{info.local_rank}"
