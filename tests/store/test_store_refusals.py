"""Every bad input is a one-line StoreError naming the input and what was expected."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from cemaps.errors import StoreError
from cemaps.store import StoreWriter, open_store

SETTINGS = {"generation": {"steps": 4}, "capture": {"spatial": 16}}
BASE = {"model_id": "tiny-sd", "weight_hash": "abc123"}
AXES = {"attn": ("token", "y", "x")}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "study.h5"
    with StoreWriter(path, settings=SETTINGS, base=BASE) as writer:
        writer.add_models([{"model_id": "dog_lora", "method": "lora", "sha256": "aa"}])
        writer.write_record("base", "p0", 0, {"attn": np.zeros((3, 4, 4), np.float16)}, AXES)
    return path


def test_refuses_different_settings(store_path):
    changed = {"generation": {"steps": 4}, "capture": {"spatial": 32}}
    with pytest.raises(StoreError) as err:
        StoreWriter(store_path, settings=changed, base=BASE)
    assert one_line(err) == (
        f"{store_path}: capture setting 'capture.spatial' is 16 in the store but 32 now; use a new --store path"
    )


def test_refuses_missing_setting(store_path):
    with pytest.raises(StoreError) as err:
        StoreWriter(store_path, settings={"capture": {"spatial": 16}}, base=BASE)
    assert one_line(err).endswith(
        "capture setting 'generation' is {\"steps\": 4} in the store but absent now; use a new --store path"
    )


def test_refuses_different_base(store_path):
    with pytest.raises(StoreError) as err:
        StoreWriter(store_path, settings=SETTINGS, base={"model_id": "tiny-sd", "weight_hash": "ffff"})
    assert one_line(err) == (
        f"{store_path}: base model setting 'weight_hash' is 'abc123' in the store but "
        "'ffff' now; use a new --store path"
    )


def test_refuses_foreign_h5(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as other:
        other["x"] = np.arange(3)
    for attempt in (lambda: open_store(path), lambda: StoreWriter(path, settings=SETTINGS, base=BASE)):
        with pytest.raises(StoreError) as err:
            attempt()
        assert one_line(err) == (
            f"{path}: not a cemaps store (no format attribute); expected a file written by cemaps capture"
        )


def test_refuses_garbage_bytes(tmp_path):
    path = tmp_path / "study.h5"
    path.write_bytes(b"this is not hdf5 at all" * 10)
    for attempt in (lambda: open_store(path), lambda: StoreWriter(path, settings=SETTINGS, base=BASE)):
        with pytest.raises(StoreError) as err:
            attempt()
        assert one_line(err).startswith(f"{path}: not a readable HDF5 file (")


def test_refuses_truncated_manifest(store_path):
    data = store_path.read_bytes()
    store_path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError) as err:
        open_store(store_path)
    assert one_line(err).startswith(f"{store_path}: not a readable HDF5 file (")


def test_refuses_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(StoreError) as err:
        open_store(path)
    assert one_line(err) == f"{path}: no such store; expected a study.h5 written by cemaps capture"


def test_refuses_schema_version_mismatch(store_path):
    with h5py.File(store_path, "r+") as manifest:
        manifest.attrs["schema_version"] = 3
    for attempt in (lambda: open_store(store_path), lambda: StoreWriter(store_path, settings=SETTINGS, base=BASE)):
        with pytest.raises(StoreError) as err:
            attempt()
        assert one_line(err) == (
            f"{store_path}: schema_version is 3 but this cemaps reads 1, 2 and writes 2; "
            "use the cemaps release that wrote it or a new store path"
        )


def test_refuses_same_model_id_different_content(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer:
        writer.add_models([{"model_id": "dog_lora", "method": "lora", "sha256": "aa"}])  # identical: fine
        with pytest.raises(StoreError) as err:
            writer.add_models([{"model_id": "dog_lora", "method": "lora", "sha256": "bb"}])
    assert one_line(err) == (
        f"{store_path}: model_id 'dog_lora' is already stored with 'sha256' = 'aa', "
        "not 'bb'; give the new one another model_id"
    )


def test_refuses_same_prompt_id_different_text(store_path):
    row = {"prompt_id": "p0", "text": "a cube", "tokens": ["a", "cube"], "token_ids": [1, 2]}
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer:
        writer.add_prompts([row])
        with pytest.raises(StoreError) as err:
            writer.add_prompts([dict(row, text="a sphere")])
    assert one_line(err).endswith(
        "prompt_id 'p0' is already stored with 'text' = 'a cube', not 'a sphere'; give the new one another prompt_id"
    )


def test_refuses_prompt_without_tokens(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.add_prompts([{"prompt_id": "p0", "text": "a cube"}])
    assert one_line(err) == (
        f"{store_path}: prompts row 0 lacks 'tokens'; expected keys prompt_id, text, tokens, token_ids"
    )


def test_refuses_trailing_shape_mismatch(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.write_record("base", "p1", 0, {"attn": np.zeros((3, 8, 8), np.float16)}, AXES)
    assert one_line(err) == (
        f"{store_path}: record ('base', 'p1', 0): array 'attn' has trailing shape [8, 8] "
        "but the store holds [4, 4] for it; only the first axis may vary"
    )


def test_refuses_dtype_mismatch(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.write_record("base", "p1", 0, {"attn": np.zeros((3, 4, 4), np.float32)}, AXES)
    assert one_line(err).endswith(
        "array 'attn' has dtype float32 but the store holds float16 for it; cast it before writing"
    )


def test_refuses_wrong_axes_count(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.write_record("base", "p1", 0, {"attn": np.zeros((3, 4, 4), np.float16)}, {"attn": ("token",)})
    assert one_line(err).endswith("axes['attn'] is ('token',); expected 3 axis names for shape [3, 4, 4]")


def test_refuses_duplicate_record(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.write_record("base", "p0", 0, {"attn": np.zeros((3, 4, 4), np.float16)}, AXES)
    assert one_line(err) == (
        f"{store_path}: record ('base', 'p0', 0) is already in the store; skip keys in writer.completed()"
    )


def test_refuses_bad_image(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.write_record(
            "base", "p1", 0, {"attn": np.zeros((3, 4, 4), np.float16)}, AXES, image=np.zeros((8, 8, 3), np.float32)
        )
    assert one_line(err).endswith("image has dtype float32 and shape [8, 8, 3]; expected uint8 [H, W, 3]")


def test_refuses_bad_array_name(store_path):
    with StoreWriter(store_path, settings=SETTINGS, base=BASE) as writer, pytest.raises(StoreError) as err:
        writer.write_record("base", "p1", 0, {"a//b": np.zeros((3,), np.float16)}, {"a//b": ("token",)})
    assert one_line(err).startswith("array name 'a//b': expected a non-empty path like")


def test_refuses_bad_writer_tag(tmp_path):
    with pytest.raises(StoreError) as err:
        StoreWriter(tmp_path / "study.h5", settings=SETTINGS, base=BASE, writer_tag="gpu/0")
    assert one_line(err).startswith("writer_tag 'gpu/0': expected letters, digits")


def test_refuses_bad_records_per_part(tmp_path):
    with pytest.raises(StoreError) as err:
        StoreWriter(tmp_path / "study.h5", settings=SETTINGS, base=BASE, records_per_part=0)
    assert one_line(err) == "records_per_part 0: expected an integer >= 1"


def test_refuses_non_json_settings(tmp_path):
    with pytest.raises(StoreError) as err:
        StoreWriter(tmp_path / "study.h5", settings={"device": object()}, base=BASE)
    assert one_line(err) == (
        f"{tmp_path / 'study.h5'}: settings: object is not JSON-serialisable; "
        "expected JSON-able values (str, int, float, bool, list, dict)"
    )


def test_refuses_missing_parent_folder(tmp_path):
    path = tmp_path / "missing" / "study.h5"
    with pytest.raises(StoreError) as err:
        StoreWriter(path, settings=SETTINGS, base=BASE)
    assert one_line(err) == f"{path}: folder {path.parent} does not exist; create it first"


def test_refuses_use_after_close(store_path):
    writer = StoreWriter(store_path, settings=SETTINGS, base=BASE)
    writer.close()
    with pytest.raises(StoreError) as err:
        writer.write_record("base", "p1", 0, {"attn": np.zeros((3, 4, 4), np.float16)}, AXES)
    assert one_line(err) == f"{store_path}: writer 'w0' is closed"


def test_reader_refuses_unknown_array_and_record(store_path):
    with open_store(store_path) as store:
        with pytest.raises(StoreError) as err:
            store.read_one("nope", 0)
        assert one_line(err) == f"{store_path}: no array 'nope'; available: attn"
        with pytest.raises(StoreError) as err:
            store.read("attn", [0, 5])
        assert one_line(err) == f"{store_path}: record 5; expected an integer in 0..0"


def test_reader_leaves_out_damaged_part_with_one_warning(store_path):
    part = next((store_path.parent / "study.h5.parts").glob("part-*.h5"))
    part.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=f"1 damaged part file\\(s\\) left out \\({part.name}\\)") as caught:
        store = open_store(store_path)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert list(store.damaged_parts) == [part] and len(store.records) == 0
