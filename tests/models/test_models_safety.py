"""Weight files are read without executing them: safetensors always, pickle only on opt-in and weights_only."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.models.safety import check_pickle_allowed, is_pickle_file, load_weights


class WritesMarkerOnLoad:
    """Unpickling this calls os.system, as a malicious checkpoint would."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safetensors_file_is_read(tmp_path):
    save_file({"a": torch.arange(3.0)}, tmp_path / "w.safetensors")
    loaded = load_weights(tmp_path / "w.safetensors")
    assert torch.equal(loaded["a"], torch.arange(3.0))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_files_are_refused_without_opt_in(tmp_path, suffix):
    torch.save({"a": torch.zeros(1)}, tmp_path / f"w{suffix}")
    assert is_pickle_file(tmp_path / f"w{suffix}")
    with pytest.raises(ModelLoadError, match=r"refusing to read pickle-based weights .*allow_pickle=True"):
        load_weights(tmp_path / f"w{suffix}")


def test_pickle_tensors_load_with_opt_in_and_state_dict_is_unwrapped(tmp_path):
    torch.save({"state_dict": {"a": torch.ones(2)}, "global_step": 7}, tmp_path / "sd.ckpt")
    assert torch.equal(load_weights(tmp_path / "sd.ckpt", allow_pickle=True)["a"], torch.ones(2))
    torch.save(torch.ones(3), tmp_path / "raw.pt")
    assert torch.equal(load_weights(tmp_path / "raw.pt", allow_pickle=True)[""], torch.ones(3))


def test_malicious_pickle_executes_nothing_with_or_without_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.ckpt", "wb") as handle:
        pickle.dump({"state_dict": WritesMarkerOnLoad(str(marker))}, handle, protocol=2)
    with pytest.raises(ModelLoadError, match="refusing"):
        load_weights(tmp_path / "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match=r"weights_only=True\) refused it"):
        load_weights(tmp_path / "evil.ckpt", allow_pickle=True)
    assert not marker.exists()
    # the marker mechanism itself works: a plain pickle.load would have run it
    with open(tmp_path / "evil.ckpt", "rb") as handle:
        pickle.load(handle)
    assert marker.exists()


def test_missing_unknown_and_corrupt_files_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"suffix '\.onnx'; expected one of"):
        load_weights(tmp_path / "w.onnx")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_weights(tmp_path / "bad.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="holds a list; expected a dict"):
        load_weights(tmp_path / "list.pt", allow_pickle=True)


def test_check_pickle_allowed_passes_safetensors_and_opted_in_pickles(tmp_path):
    check_pickle_allowed(tmp_path / "w.safetensors", allow_pickle=False)
    check_pickle_allowed(tmp_path / "w.bin", allow_pickle=True)
