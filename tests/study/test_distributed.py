"""Multi-process capture: each process a disjoint share under its own tag; every record once.

The end-to-end tests start real launchers (``torch.distributed.run``, i.e. ``torchrun``, and
``accelerate launch``) with 2 CPU processes on the tiny model and compare the store with a
1-process run of the same study. All runs use one thread per process (OMP_NUM_THREADS=1),
so the maps and images are bit-identical: a process's batches are the same batches a single
process generates, and with equal thread counts the same kernels run in the same order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cemaps.errors import ConfigError
from cemaps.store import open_store
from cemaps.store.layout import parts_dir, sealed_files, split_name
from cemaps.store.part_index import read_part_index
from cemaps.study.distributed import ProcessInfo, capture_device, process_info, shard, shard_bounds

PROMPTS = ["a red mug", "freedom", "two cats on a sofa", "a foggy harbour", "an oil painting of a pear", "joy"]
CONFIG = """
base: cemaps/tiny-sd
prompts: {prompts}
seeds: [0, 1]
generation: {{steps: 3, batch_size: 2}}
capture: {{timesteps: 2}}
personalized:
  - {{id: lora-a, method: lora, subject: object1, path: {lora}}}
"""
RECORDS = 2 * len(PROMPTS) * 2  # (base + 1 LoRA) x prompts x seeds


# ---- process identity and shares ----------------------------------------------------------------
def test_no_launcher_is_one_process():
    assert process_info({}) == ProcessInfo(0, 1, 0, "single")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, ProcessInfo(3, 4, 1, "torchrun")),
        (
            {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
            ProcessInfo(1, 2, 1, "mpi"),
        ),
        ({"PMI_RANK": "2", "PMI_SIZE": "3"}, ProcessInfo(2, 3, 2, "mpi")),
    ],
)
def test_launcher_variables(environ, expected):
    assert process_info(environ) == expected
    assert expected.writer_tag == f"rank{expected.rank}"


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x': expected an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2: expected 0..1"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0: expected a process count >= 1"),
        ({"RANK": "0"}, "WORLD_SIZE is not set"),
    ],
)
def test_bad_launcher_variables_are_named(environ, match):
    with pytest.raises(ConfigError, match=match):
        process_info(environ)


@pytest.mark.parametrize("n_items", [0, 1, 5, 12, 97])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_the_batches_in_order(n_items, world):
    items = list(range(n_items))
    shares = [shard(items, rank, world) for rank in range(world)]
    assert sum(shares, []) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [shard_bounds(n_items, r, world)[1] - shard_bounds(n_items, r, world)[0] for r in range(world)] == [
        len(s) for s in shares
    ]


def test_capture_device_on_cpu_keeps_the_request():
    two = ProcessInfo(1, 2, 1, "torchrun")
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert capture_device(two, None) is None
    assert capture_device(two, "cpu") == "cpu"
    assert capture_device(ProcessInfo(0, 1, 0, "single"), "cuda:1") == "cuda:1"


def test_capture_device_picks_the_local_gpu_and_refuses_more_processes_than_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert capture_device(ProcessInfo(3, 4, 1, "torchrun"), None) == "cuda:1"
    assert capture_device(ProcessInfo(3, 4, 1, "torchrun"), "cuda") == "cuda:1"
    assert capture_device(ProcessInfo(3, 4, 1, "torchrun"), "cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="local rank 2: only 2 CUDA devices are visible"):
        capture_device(ProcessInfo(2, 4, 2, "torchrun"), None)


# ---- end to end ------------------------------------------------------------------------------------
def _make_lora(folder: Path) -> Path:
    """A diffusers/peft LoRA on the tiny UNet's attention projections, non-zero lora_B."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from cemaps.models import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(study.yaml, the 1-process reference store's content) shared by the end-to-end tests."""
    folder = tmp_path_factory.mktemp("distributed")
    config = folder / "study.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(prompts=PROMPTS, lora=_make_lora(folder / "lora"))))
    reference = folder / "one.h5"
    done = subprocess.run(_cemaps_capture(config, reference), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return config, _content(reference)


def _env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}


def _cemaps_capture(config: Path, store: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cemaps",
        "capture",
        "-c",
        str(config),
        "-o",
        str(store),
        "--records-per-part",
        "1",
        "--no-progress",
    ]


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _torchrun(config: Path, store: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        _free_port(),
        *_cemaps_capture(config, store)[1:],
    ]


def _content(path: Path) -> dict:
    """(model, prompt, seed) -> (arrays, image), and the weight-delta table."""
    with open_store(path) as store:
        out = {}
        for row in store.records.itertuples():
            arrays = {name: store.read_one(name, row.record) for name in store.array_names}
            out[(row.model_id, row.prompt_id, row.seed)] = (arrays, store.images([row.record])[0])
        out["weight_deltas"] = store.table("weight_deltas")
        return out


def _part_keys(path: Path) -> dict[str, list]:
    """Writer tag -> record keys of its sealed parts."""
    tags: dict[str, list] = {}
    for part in sealed_files(parts_dir(path), "part"):
        tags.setdefault(split_name(part.name)[1], []).extend(read_part_index(part).keys)
    return tags


def _assert_equal_to_reference(path: Path, reference: dict) -> None:
    tags = _part_keys(path)
    assert sorted(tags) == ["rank0", "rank1"]
    keys = [key for part_keys in tags.values() for key in part_keys]
    assert len(keys) == len(set(keys)) == RECORDS, "a record was written twice or is missing"
    assert not set(tags["rank0"]) & set(tags["rank1"])
    content = _content(path)
    assert content.keys() == reference.keys()
    for key in reference:
        if key == "weight_deltas":
            columns = ["model_id", "component", "module", "param"]
            got = content[key].sort_values(columns).reset_index(drop=True)
            expected = reference[key].sort_values(columns).reset_index(drop=True)
            assert got.equals(expected)
            continue
        arrays, image = content[key]
        assert arrays.keys() == reference[key][0].keys()
        for name in arrays:  # one thread per process on both sides: bit-identical, tolerance 0
            np.testing.assert_array_equal(arrays[name], reference[key][0][name], err_msg=f"{key} {name}")
        np.testing.assert_array_equal(image, reference[key][1], err_msg=str(key))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("victim_rank", "after_parts"),
    [
        ("1", 2),  # one rank dies; the launcher then stops the other
        (None, 1),  # the launcher and both ranks die at once (SIGKILL to the group: a lost node)
    ],
)
def test_torchrun_two_processes_killed_then_rerun_completes_only_the_missing(study, tmp_path, victim_rank, after_parts):
    config, reference = study
    store = tmp_path / "two.h5"
    launcher = subprocess.Popen(
        _torchrun(config, store),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import psutil

    victim, deadline = None, time.time() + 300
    try:
        while time.time() < deadline and launcher.poll() is None:
            if victim is None and victim_rank is not None:
                workers = [
                    p
                    for p in psutil.Process(launcher.pid).children(recursive=True)
                    if _environ(p).get("RANK") == victim_rank
                ]
                victim = workers[0] if workers else None
            if len(_part_keys(store).get(f"rank{victim_rank or 0}", [])) >= after_parts:
                break
            time.sleep(0.05)
        assert launcher.poll() is None, "the capture finished before the kill point"
        if victim_rank is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        else:
            assert victim is not None
            victim.send_signal(signal.SIGKILL)  # the launcher then stops the other rank as well
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    survivors = {key for keys in _part_keys(store).values() for key in keys}
    assert after_parts <= len(survivors) < RECORDS
    with open_store(store) as killed:  # readable at the kill point, holding exactly the sealed records
        assert {(r.model_id, r.prompt_id, r.seed) for r in killed.records.itertuples()} == survivors
    parts_before = set(sealed_files(parts_dir(store), "part"))

    rerun = subprocess.run(_torchrun(config, store), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    new_parts = set(sealed_files(parts_dir(store), "part")) - parts_before
    new_keys = {key for part in new_parts for key in read_part_index(part).keys}
    assert len(new_parts) == len(new_keys) == RECORDS - len(survivors)  # 1 record per part: only the missing ones
    assert not new_keys & survivors
    _assert_equal_to_reference(store, reference)


def _environ(process) -> dict[str, str]:
    try:
        return process.environ()
    except Exception:  # the process ended or is not ours to read
        return {}


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_equals_one_process(study, tmp_path):
    config, reference = study
    store = tmp_path / "accelerate.h5"
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate runs several CPU
    # processes only through mpirun); --multi_gpu runs torchrun, which on a machine without CUDA
    # gives 2 CPU processes with RANK/WORLD_SIZE set.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        _free_port(),
        *_cemaps_capture(config, store)[1:],
    ]
    if torch.cuda.device_count() > 0:
        pytest.skip("checks the CPU launch path")
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("in this process's share") + done.stderr.count("in this process's share") == 2
    _assert_equal_to_reference(store, reference)
