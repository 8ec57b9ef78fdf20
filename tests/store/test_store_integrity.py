"""Issue 22, kind 1: a damaged, foreign or concurrently written store is detected, named and contained."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from cemaps.errors import StoreError
from cemaps.store import StoreWriter, open_store
from cemaps.store.layout import parts_dir, sealed_files
from cemaps.store.verify import verify_store

SETTINGS = {"generation": {"guidance_scale": 7.5}}
BASE = {"model_id": "tiny-sd"}
AXES = {"attn": ("token", "y", "x")}
KEYS = [("base", f"p{i}", 0) for i in range(6)]


def record(i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(i)
    return {"attn": rng.random((40, 16, 16)).astype(np.float16)}, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)


def write(path: Path, keys=KEYS, settings=SETTINGS, **kwargs) -> None:
    with StoreWriter(path, settings=settings, base=BASE, records_per_part=3, **kwargs) as writer:
        for model_id, prompt_id, seed in keys:
            arrays, image = record(int(prompt_id[1:]))
            writer.write_record(model_id, prompt_id, seed, arrays, AXES, image=image)


def contents(path: Path) -> dict[tuple, tuple[bytes, bytes]]:
    """Every record's array and image bytes, by key (what an uninterrupted store must equal)."""
    with open_store(path) as store:
        return {
            (r.model_id, r.prompt_id, r.seed): (
                store.read_one("attn", r.record).tobytes(),
                store.images([r.record]).tobytes(),
            )
            for r in store.records.itertuples()
        }


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture()
def store(tmp_path) -> Path:
    path = tmp_path / "study.h5"
    write(path)
    return path


def flip_bit_in_chunk(part: Path, chunk: int = 0) -> None:
    with h5py.File(part, "r") as handle:
        info = handle["arrays/attn"].id.get_chunk_info(chunk)
    data = bytearray(part.read_bytes())
    data[info.byte_offset + info.size // 2] ^= 0x10
    part.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_map_chunk_is_an_error_naming_part_and_record(store):
    first, second = sealed_files(parts_dir(store), "part")
    flip_bit_in_chunk(first)
    truth = {i: record(i)[0]["attn"] for i in range(6)}
    with open_store(store) as reader:
        assert not reader.damaged_parts  # the index is whole; only a map chunk is not
        with pytest.raises(StoreError) as err:
            reader.read_one("attn", 0)
        assert one_line(err).startswith(f"{first}: damaged store part: array 'attn' of record(s) (base, p0, seed 0)")
        with pytest.raises(StoreError, match="damaged store part"):
            reader.read("attn", [0, 1, 2])
        for r in (3, 4, 5):  # the other part reads, with the right numbers
            assert np.array_equal(reader.read_one("attn", r), truth[r])
    result = verify_store(store)
    assert not result.ok and [f.path for f in result.damaged] == [first]
    assert result.lines()[0].startswith(f"{first.name}: record (base, p0, seed 0): array 'attn' fails its checksum")


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_overwritten_bytes_are_never_read_as_other_numbers(store, where):
    part = sealed_files(parts_dir(store), "part")[0]
    data = bytearray(part.read_bytes())
    offset = int(len(data) * where)
    data[offset : offset + 64] = bytes([0xA5]) * 64
    part.write_bytes(bytes(data))
    detected = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = open_store(store)
    detected |= bool(caught) and bool(reader.damaged_parts)
    for r in reader.records.itertuples():
        i = int(r.prompt_id[1:])
        arrays, image = record(i)
        try:
            assert np.array_equal(reader.read_one("attn", r.record), arrays["attn"])
            assert np.array_equal(reader.images([r.record])[0], image)
        except StoreError:
            detected = True
    reader.close()
    result = verify_store(store)
    if not result.ok:
        detected = True
        assert {f.path for f in result.damaged} == {part}
    assert detected or bytes(data) == part.read_bytes()  # damage found, and never a silent difference


def test_a_truncated_part_stays_inside_its_part_and_is_remade_after_moving_it_aside(store, tmp_path):
    reference = tmp_path / "ref" / "study.h5"
    reference.parent.mkdir()
    write(reference)
    first = sealed_files(parts_dir(store), "part")[0]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"1 damaged part file\\(s\\) left out \\({first.name}\\)"):
        with open_store(store) as reader:
            assert sorted(reader.records["prompt_id"]) == ["p3", "p4", "p5"]
    with pytest.raises(StoreError) as err:
        StoreWriter(store, settings=SETTINGS, base=BASE)
    assert one_line(err).startswith(f"{store}: 1 damaged part file(s), e.g. {first.name} (damaged store part")
    assert "--set-aside-damaged" in str(err.value)
    aside = tmp_path / "aside"
    aside.mkdir()
    shutil.move(first, aside / first.name)
    with StoreWriter(store, settings=SETTINGS, base=BASE) as writer:
        missing = [key for key in KEYS if key not in writer.completed()]
    assert missing == KEYS[:3]  # exactly the records of the damaged part
    write(store, missing)
    assert contents(store) == contents(reference)


def test_set_aside_damaged_moves_chunk_damage_aside_and_remakes_its_records(store, tmp_path):
    reference = tmp_path / "ref" / "study.h5"
    reference.parent.mkdir()
    write(reference)
    second = sealed_files(parts_dir(store), "part")[1]
    flip_bit_in_chunk(second)
    with StoreWriter(store, settings=SETTINGS, base=BASE, set_aside_damaged=True) as writer:
        missing = [key for key in KEYS if key not in writer.completed()]
    assert missing == KEYS[3:]
    assert [p.name for p in (tmp_path / "study.h5.damaged").iterdir()] == [second.name]
    write(store, missing)
    assert contents(store) == contents(reference) and verify_store(store).ok


def test_a_part_from_another_study_is_refused_by_name(store, tmp_path):
    other = tmp_path / "other" / "study.h5"
    other.parent.mkdir()
    write(other, [("base", "p9", 0)], settings={"generation": {"guidance_scale": 5.0}})
    foreign = sealed_files(parts_dir(other), "part")[0]
    copied = parts_dir(store) / foreign.name.replace("w0", "w9")
    shutil.copy(foreign, copied)
    for attempt in (lambda: open_store(store), lambda: StoreWriter(store, settings=SETTINGS, base=BASE)):
        with pytest.raises(StoreError) as err:
            attempt()
        assert one_line(err) == (
            f"{copied.name}: written under another study (settings.generation.guidance_scale is 5.0 there but 7.5 "
            f"in this store); move it out of {parts_dir(store)} (it belongs to the store it came from)"
        )
    result = verify_store(store)
    assert [f.path for f in result.damaged] == [copied]
    assert result.damaged[0].problem.startswith("written under another study (settings.generation.guidance_scale")


def test_a_second_writer_under_the_same_tag_is_refused_naming_the_holder(store):
    import os
    import socket

    first = StoreWriter(store, settings=SETTINGS, base=BASE)
    before = sorted(p.name for p in parts_dir(store).iterdir())
    with pytest.raises(StoreError) as err:
        StoreWriter(store, settings=SETTINGS, base=BASE)
    assert one_line(err).startswith(
        f"{store}: writer tag 'w0' is held by pid {os.getpid()} on {socket.gethostname()} (since "
    )
    assert sorted(p.name for p in parts_dir(store).iterdir()) == before  # nothing touched
    StoreWriter(store, settings=SETTINGS, base=BASE, writer_tag="w1").close()  # another tag writes beside it
    first.close()
    StoreWriter(store, settings=SETTINGS, base=BASE).close()  # released
    assert not list(parts_dir(store).glob("*.lock"))


def test_a_store_path_that_is_a_symlink_is_followed(tmp_path):
    real = tmp_path / "disk" / "study.h5"
    real.parent.mkdir()
    write(real, KEYS[:2])
    link = tmp_path / "study.h5"
    link.symlink_to(real)
    write(link, KEYS[2:])
    assert link.is_symlink() and link.resolve() == real
    assert not (tmp_path / "study.h5.parts").exists()
    with open_store(link) as reader:
        assert len(reader.records) == 6
    assert verify_store(link).ok


class FullDisk:
    """Injected at the store's one write call (``layout.write_image`` opens its file with ``open``):
    once ``full`` is set, every write fails as a full disk does (portable: needs no mount or root)."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 - returned to the caller's with-block
        if self.full and "w" in mode:
            handle.close()
            raise OSError(28, "No space left on device", str(path))
        return handle


def test_a_full_disk_is_one_line_naming_the_file_and_sealed_records_resume(tmp_path, monkeypatch):
    import cemaps.store.layout as layout

    reference = tmp_path / "ref" / "study.h5"
    reference.parent.mkdir()
    write(reference)
    disk = FullDisk()
    monkeypatch.setattr(layout, "open", disk, raising=False)
    path = tmp_path / "study.h5"
    with pytest.raises(StoreError) as err:
        with StoreWriter(path, settings=SETTINGS, base=BASE, records_per_part=3) as writer:
            for model_id, prompt_id, seed in KEYS:
                disk.full = prompt_id == "p5"  # the second part is sealed with its third record
                arrays, image = record(int(prompt_id[1:]))
                writer.write_record(model_id, prompt_id, seed, arrays, AXES, image=image)
    assert one_line(err) == (
        f"{parts_dir(path) / 'part-w0-00001.h5'}: cannot write (no space left on device); the store study.h5 "
        "keeps every sealed record: free space (or fix the folder) and rerun to resume"
    )
    assert [p.name for p in sealed_files(parts_dir(path), "part")] == ["part-w0-00000.h5"]
    assert not list(parts_dir(path).glob("*.tmp")) and not list(parts_dir(path).glob(".*"))
    with open_store(path) as reader:
        assert sorted(reader.records["prompt_id"]) == ["p0", "p1", "p2"]  # sealed records kept
    disk.full = False
    with StoreWriter(path, settings=SETTINGS, base=BASE) as writer:
        missing = [key for key in KEYS if key not in writer.completed()]
    write(path, missing)
    assert contents(path) == contents(reference)


def test_an_unwritable_manifest_is_named_not_its_temporary_file(store, monkeypatch):
    import cemaps.store.layout as layout

    real_replace = os.replace

    def refuse(source, target):
        if Path(target) == store:
            raise PermissionError(1, "Operation not permitted", str(source), str(target))
        return real_replace(source, target)

    monkeypatch.setattr(layout.os, "replace", refuse)
    before = {p.name: p.read_bytes() for p in [store, *parts_dir(store).iterdir()]}
    with pytest.raises(StoreError) as err:
        write(store, [("base", "p9", 0)])
    assert one_line(err).startswith(f"{store}: cannot write (Operation not permitted)")
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert store.read_bytes() == before["study.h5"]
