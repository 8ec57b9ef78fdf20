"""One digest recipe per kind of thing: a file, a folder; the study's model table and `applied` agree."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.hashing import file_sha256, folder_sha256, source_sha256
from cemaps.models.personalized import PersonalizedSpec, applied


def test_folder_digest_covers_weight_files_by_relative_path_only(tmp_path):
    (tmp_path / "unet").mkdir()
    save_file({"w": torch.ones(2)}, tmp_path / "unet" / "m.safetensors")
    first = folder_sha256(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "unet" / "config.json").write_text("{}")
    assert folder_sha256(tmp_path) == first  # notes and configs are not the model's identity
    (tmp_path / "unet" / "m.safetensors").rename(tmp_path / "m.safetensors")
    assert folder_sha256(tmp_path) != first  # the same bytes in another place are another model
    line = f"m.safetensors:{file_sha256(tmp_path / 'm.safetensors')}\n".encode()
    assert folder_sha256(tmp_path) == hashlib.sha256(line).hexdigest()


def test_applied_reports_the_digest_the_study_records(tmp_path):
    tiny_pipeline(seed=1).save_pretrained(tmp_path / "db")
    pipe = tiny_pipeline(seed=0)
    with applied(pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db"))) as model:
        assert model.sha256 == source_sha256(tmp_path / "db") == folder_sha256(tmp_path / "db")


def test_missing_path_cannot_be_hashed(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        source_sha256(tmp_path / "nope")
