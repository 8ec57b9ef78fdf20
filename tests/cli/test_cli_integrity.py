"""Issue 22 through the CLI: damage named by `inspect --verify`, one writer per tag, read-only and full
disks, hostile weight files, symlinked outputs: each one line, exit 2, files unchanged."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
from pathlib import Path

import h5py
import pytest
from cli_helpers import SMALL, assert_refused, read_only_folder, snapshot, write


def _flip_bit(part: Path) -> None:
    with h5py.File(part, "r") as handle:
        name = next(n for n in handle["arrays"].keys())
        group = handle["arrays"][name]
        dataset = group if isinstance(group, h5py.Dataset) else group[next(iter(group.keys()))]
        info = dataset.id.get_chunk_info(0)
    data = bytearray(part.read_bytes())
    data[info.byte_offset + info.size // 2] ^= 0x01
    part.write_bytes(bytes(data))


def test_inspect_verify_names_each_damaged_part_and_record(cli, study_copy):
    store = study_copy / "study.h5"
    code, out, _ = cli("inspect", store, "--verify")
    assert code == 0 and "no damage" in out
    part = sorted((study_copy / "study.h5.parts").glob("part-*.h5"))[0]
    _flip_bit(part)
    code, out, err = cli("inspect", store, "--verify")
    lines = out.splitlines()
    assert code == 1 and "Traceback" not in out + err
    assert lines[0].startswith(f"damaged: {part.name}: record (") and "fails its checksum" in lines[0]
    assert lines[-1].startswith(f"{store}: 1 of ") and "--set-aside-damaged" in lines[-1]


def test_a_second_capture_on_a_held_tag_is_one_line_naming_the_holder(cli, study_copy):
    from cemaps.store import StoreWriter
    from cemaps.store.manifest import read_header

    store = study_copy / "study.h5"
    header = read_header(store)
    holder = StoreWriter(store, settings=header.settings, base=header.base, writer_tag="rank0")
    try:
        before = snapshot(study_copy)
        code, _, err = cli("capture", "-c", study_copy / "study.yaml", "-q")
        assert_refused(code, err, str(store), "writer tag 'rank0' is held by pid", str(os.getpid()))
        assert snapshot(study_copy) == before
    finally:
        holder.close()


def test_a_read_only_parts_folder_is_refused_before_generating(cli, tmp_path):
    config = write(tmp_path, SMALL)
    parts = tmp_path / "s.h5.parts"
    with read_only_folder(parts):
        before = snapshot(tmp_path)
        code, _, err = cli("capture", "-c", config, "--store", tmp_path / "s.h5", "-q")
        assert_refused(code, err, str(parts), "capture needs a store folder this user can write to")
        assert snapshot(tmp_path) == before and not (tmp_path / "s.h5").exists()


def test_a_corrupt_safetensors_as_clip_weights_is_one_line(cli, study_copy, tmp_path):
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    code, _, err = cli("analyze", study_copy / "study.h5", "--out", tmp_path / "results", "--clip-weights", weights)
    assert_refused(code, err, f"CLIP weights file '{weights}' is not a readable safetensors file")
    assert not (tmp_path / "results").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_malicious_pickle_with_allow_pickle_is_one_line_and_runs_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "lora.bin", "wb") as handle:
        pickle.dump({"unet.x.lora_A.weight": _Evil()}, handle)
    config = write(tmp_path, SMALL + "personalized:\n  - {id: l, method: lora, path: lora.bin, allow_pickle: true}\n")
    code, _, err = cli("capture", "-c", config, "--store", tmp_path / "s.h5", "-q")
    assert_refused(code, err, "lora.bin", "torch.load(weights_only=True) refused it (Weights only load failed)")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "s.h5").exists()


def test_report_out_as_a_symlink_to_an_empty_folder_is_followed(cli, analysed_results, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "report"
    link.symlink_to(target)
    code, _, err = cli("report", analysed_results, "--out", link)
    assert code == 0, err
    assert link.is_symlink() and (target / "report.html").is_file()


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` (a real full disk), or the test is skipped saying why."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the store-level test injects ENOSPC instead")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@pytest.mark.parametrize("command", ["capture", "analyze", "report"])
def test_a_full_disk_is_one_line_naming_the_path(cli, study_copy, analysed_results, tmp_path, command):
    size = {"capture": "160k", "analyze": "16k", "report": "64k"}[command]  # a little less than each writes
    with small_disk(tmp_path / "disk", size) as disk:
        if command == "capture":
            (disk / "study").mkdir()
            config = write(tmp_path, SMALL.replace("seeds: [0]", "seeds: [0, 1, 2, 3, 4, 5, 6, 7]"))
            args = ("capture", "-c", config, "--store", disk / "study" / "study.h5", "--records-per-part", "1", "-q")
            fragment = str(disk / "study")
        elif command == "analyze":
            args = ("analyze", study_copy / "study.h5", "--out", disk / "results", "-q")
            fragment = str(disk / "results")
        else:
            args = ("report", analysed_results, "--out", disk / "report")
            fragment = str(disk / "report")
        code, _, err = cli(*args)
        line = assert_refused(code, err, fragment)
        assert "no space left on device" in line.lower()
        if command == "capture":
            from cemaps.store import open_store

            with open_store(disk / "study" / "study.h5") as store:  # sealed records kept, store readable
                kept = len(store.records)
            assert 0 < kept < 16
            assert not list((disk / "study" / "study.h5.parts").glob("*.tmp"))
        else:
            assert not (disk / fragment.rsplit("/", 1)[-1]).exists()
